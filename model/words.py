"""Counts as a person reads them (model/ and hpo/ both print counts): `1 video`, `2 videos` (never `1 videos`)."""

from __future__ import annotations

__all__ = ["plural"]

_IRREGULAR = {"study": "studies"}


def plural(n: int, word: str) -> str:
    """`n` and `word`, in the plural unless `n` is 1 (`plural(1, "epoch")` is `1 epoch`)."""
    return f"{n} {word if n == 1 else _IRREGULAR.get(word, word + 's')}"
