"""icl_lightning: in-context learning as implicit gradient descent, on PyTorch Lightning."""

__version__ = "0.1.0"
