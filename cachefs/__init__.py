"""cachefs: a distributed cache file system for machine-learning training data."""

__version__ = "0.1.0"
