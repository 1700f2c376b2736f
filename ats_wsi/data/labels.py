"""Class labels as people type them: ``Normal``, ``normal `` and ``NORMAL`` are one class;
``Tumour`` beside ``tumor`` is probably a typo.

- :func:`label_key`: the form labels are compared in (case folded, runs of
  spaces, ``_`` and ``-`` as one space, ends stripped).
- :func:`spelling_of`: the class name of a group of spellings (the most
  frequent one; ties: the first in the file).
- :func:`suspected_typos`: pairs of classes whose keys differ by a small edit
  (one for names under 8 characters, two from 8 on; transpositions count
  one), not counting pairs that differ only in digits (``grade 1``/``grade 2``)
  or names under 4 characters (``A``/``B``, ``G1``/``G2``).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

__all__ = ["label_key", "spelling_of", "edit_distance", "suspected_typos"]

_SEPARATORS = re.compile(r"[\s_\-]+")


def label_key(text: str) -> str:
    """``"  Tumour_Grade "`` -> ``"tumour grade"``: the form two labels are compared in."""
    return _SEPARATORS.sub(" ", str(text)).strip().casefold()


def spelling_of(spellings: Iterable[str]) -> str:
    """The name of a class written several ways: the most frequent spelling (stripped), the first on ties."""
    counts = Counter(s.strip() for s in spellings)
    return max(counts, key=lambda s: counts[s])  # max keeps the first of equal counts (insertion order)


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance of ``a`` and ``b`` (insert, delete, substitute,
    swap two neighbours), or ``limit + 1`` as soon as it must exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        if min(row) > limit:
            return limit + 1
        prev2, prev = prev, row
    return prev[-1]


def _close(a: str, b: str) -> bool:
    if min(len(a), len(b)) < 4 or re.sub(r"\d", "", a) == re.sub(r"\d", "", b):
        return False
    limit = 1 if max(len(a), len(b)) < 8 else 2
    return edit_distance(a, b, limit) <= limit


def suspected_typos(counts: dict[str, int]) -> list[tuple[str, str]]:
    """``[(rarer class, likely meant class)]`` among class names whose keys are close.

    Args:
        counts: rows per class name.
    """
    names: Sequence[str] = sorted(counts, key=lambda n: (-counts[n], label_key(n)))
    pairs = []
    for i, common in enumerate(names):
        for rare in names[i + 1:]:
            if _close(label_key(rare), label_key(common)):
                pairs.append((rare, common))
    return pairs
