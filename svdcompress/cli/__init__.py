"""Command line: ``svdcompress analyze | tune | prune | export | bench``, thin wrappers over the Python API."""

from __future__ import annotations

from .commands import main

__all__ = ["main"]
