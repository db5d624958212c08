"""Seed scheme: every random draw in a run is derived from (base seed, named stream, keys), by hashing
rather than by advancing one global RNG, so a resumed or re-ordered run draws exactly the same RSPs."""

from __future__ import annotations

import hashlib

SEED_BITS = 63


def derive_seed(base_seed: int, stream: str, *keys: object) -> int:
    """Return a 63-bit seed for `stream` and `keys`, stable across processes and Python versions."""
    text = "\x1f".join([str(int(base_seed)), stream, *(str(k) for k in keys)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)
