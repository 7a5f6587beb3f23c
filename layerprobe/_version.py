"""The version string, read by setuptools without importing the package."""

__all__ = ["__version__"]
__version__ = "0.1.0"
