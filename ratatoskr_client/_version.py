"""The package version, defined once (read by hatchling and by ``ratatoskr --version``)."""

__version__ = "0.1.0"
