"""The package version, on the lowest floor so that every layer may record it (reports, metadata, manifests)."""

__version__ = "0.1.0"
