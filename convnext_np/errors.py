"""The exceptions that convnext_np raises for bad input."""


class ConvNextError(Exception):
    """Base class of every error convnext_np raises on purpose."""


class WeightsError(ConvNextError, ValueError):
    """Weights or a config that are bad, corrupt, unsafe, or do not match the architecture."""


class ImageError(ConvNextError, ValueError):
    """An image that cannot be read or used."""
