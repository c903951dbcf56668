"""Text normalisation and hashed word n-grams for decontamination and dedup.

Example:
    >>> from budget_forcing.selection.text import normalize, ngram_hashes
    >>> normalize("  What IS\\n2 + 2? ")
    'what is 2 + 2?'
    >>> len(ngram_hashes("a b c d e f g h i", n=8))
    2
"""

from __future__ import annotations

__all__ = ["normalize", "ngram_hashes", "text_hash"]

import hashlib


def normalize(text: str) -> str:
    """Lowercase and collapse every run of whitespace to one space (the paper's normalisation)."""
    return " ".join(text.lower().split())


def ngram_hashes(text: str, n: int = 8) -> set[int]:
    """Hashes of the word ``n``-grams of the normalised text (a text shorter than ``n`` words is one gram).

    Hashes are Python's tuple hashes: 64-bit, fast, and only ever compared within one process.
    """
    words = text.lower().split()
    if len(words) < n:
        return {hash(tuple(words))} if words else set()
    return set(map(hash, zip(*(words[i:] for i in range(n)), strict=False)))


def text_hash(*parts: str) -> str:
    """A stable 128-bit hex digest of the parts (cache keys, row fingerprints)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()
