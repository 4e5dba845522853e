"""edgeshard edge node: serves int8 TFLite models over the Open Inference Protocol."""
