"""``python -m svdcompress``: the same command line as ``svdcompress``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in tests/test_cli.py
    main(prog_name="svdcompress")
