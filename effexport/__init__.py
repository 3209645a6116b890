"""effexport: verified deployment artifacts for efficient CNN image classifiers."""

__version__ = "0.1.0"
