"""The version of convnext_np, in one place: the package, its HTTP User-Agent, golden bundles'
manifests and the build (``pyproject.toml`` reads it from here) all take it from this module."""

__version__ = "0.1.0"
