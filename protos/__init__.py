"""The wire contract of edgeshard: the Open Inference Protocol messages, the
service plumbing that serves and calls them on the stock method paths, server
reflection, and the NumPy tensor codec.

The generated modules (``oip_pb2``, ``model_config_pb2``) are committed and
regenerated with ``python -m protos.generate``. This package imports nothing
else of edgeshard.
"""
