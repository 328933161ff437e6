"""Permutation sets for Jigsaw: greedy maximal minimum Hamming distance.

Noroozi & Favaro (2016) pick the permutations of the 9 tiles so that they are
as far apart as possible, which makes the task learnable at large set sizes.
The greedy algorithm here:

1. enumerate all 9! = 362,880 permutations of `range(9)` (lexicographic);
2. pick the first one at random (seeded);
3. repeat until there are `size`: keep, for every candidate, its minimum
   Hamming distance to the permutations chosen so far, and choose a candidate
   with the largest such minimum (ties broken at random, seeded).

The result is a deterministic function of `(size, seed, num_tiles)`. It is
cached in memory and on disk (`$KERAS_SSL_CACHE` or `~/.cache/keras_ssl`,
file `permutations_<tiles>_<size>_<seed>.npy`, written atomically); a file
that does not hold the expected set is recomputed. Computing 1,000
permutations take about a second, 10,000 about five (minimum distance 3).
"""

from __future__ import annotations

import itertools
import os
import tempfile

import numpy as np

MIN_SIZE, MAX_SIZE = 2, 10_000
_MEMORY: dict = {}


def cache_dir() -> str:
    """Where permutation sets are cached on disk."""
    return os.environ.get("KERAS_SSL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_ssl"
    )


def greedy_max_min_hamming(size: int, seed: int = 0, num_tiles: int = 9) -> np.ndarray:
    """Computes the permutation set (no cache). Returns int32 `[size, num_tiles]`."""
    all_perms = np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)
    if not MIN_SIZE <= size <= min(MAX_SIZE, len(all_perms)):
        raise ValueError(
            f"permutation set size must be in [{MIN_SIZE}, {min(MAX_SIZE, len(all_perms))}], got {size}."
        )
    rng = np.random.default_rng(seed)
    # equal[i][v]: which permutations hold tile v at position i (uint8 masks);
    # the Hamming distance to p is num_tiles - sum_i equal[i][p[i]].
    equal = [[(all_perms[:, i] == v).view(np.uint8) for v in range(num_tiles)]
             for i in range(num_tiles)]
    chosen = [int(rng.integers(len(all_perms)))]
    max_matches = np.zeros(len(all_perms), dtype=np.uint8)  # = num_tiles - min distance
    matches = np.empty(len(all_perms), dtype=np.uint8)
    for _ in range(size - 1):
        last = all_perms[chosen[-1]]
        matches[:] = equal[0][last[0]]
        for i in range(1, num_tiles):
            matches += equal[i][last[i]]
        np.maximum(max_matches, matches, out=max_matches)
        best = np.flatnonzero(max_matches == max_matches.min())
        chosen.append(int(best[rng.integers(len(best))]))
    return all_perms[chosen].astype(np.int32)


def permutation_set(size: int, seed: int = 0, num_tiles: int = 9, use_disk: bool = True) -> np.ndarray:
    """The cached greedy set of `size` permutations (see the module docstring).

    Example:

    >>> perms = permutation_set(10, seed=0)
    >>> perms.shape, min_hamming_distance(perms) >= 8
    ((10, 9), True)
    """
    key = (int(size), int(seed), int(num_tiles))
    if key in _MEMORY:
        return _MEMORY[key]
    path = os.path.join(cache_dir(), f"permutations_{num_tiles}_{size}_{seed}.npy")
    perms = None
    if use_disk and os.path.exists(path):
        try:
            loaded = np.load(path)
            if loaded.shape == (size, num_tiles) and _valid(loaded, num_tiles):
                perms = loaded.astype(np.int32)
        except (OSError, ValueError):
            perms = None
    if perms is None:
        perms = greedy_max_min_hamming(size, seed, num_tiles)
        if use_disk:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npy")
                with os.fdopen(fd, "wb") as f:
                    np.save(f, perms)
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only home only loses the disk cache
    perms.setflags(write=False)
    _MEMORY[key] = perms
    return perms


def _valid(perms: np.ndarray, num_tiles: int) -> bool:
    rows_are_perms = (np.sort(perms, axis=1) == np.arange(num_tiles)).all()
    return bool(rows_are_perms) and len({p.tobytes() for p in perms.astype(np.int32)}) == len(perms)


def min_hamming_distance(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two different rows of `perms`."""
    perms = np.asarray(perms)
    distances = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(distances, perms.shape[1] + 1)
    return int(distances.min())
