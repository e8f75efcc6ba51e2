"""cachefs: a distributed cache file system for machine-learning training data.

`cachefs.Client` is the file system in-process (client.py); `cachefs.torch` its PyTorch
datasets; the `cachefs://` fsspec protocol is `cachefs.fsspec`."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # imported on use: `import cachefs` stays light for the CLI
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(name)
