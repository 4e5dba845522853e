"""Version rollouts at the coordinator: labels, canary traffic, shadowing, the verdict."""
