import benchmark  # noqa: F401  (the torchvision shim must run before diffusers/transformers)
