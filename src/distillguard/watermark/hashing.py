"""Keyed pseudo-random numbers for watermarks, identical on every machine.

Every scheme needs one thing: a keyed uniform number ``u(context, token)`` in [0, 1) for each
(context window, candidate token) pair. Green lists are ``u < gamma``; the Gumbel-max scheme uses
``u`` directly as its random draw. We never touch torch's or numpy's global RNG: the context
window is hashed with BLAKE2b keyed by the secret (a real PRF, so nobody without the key can
predict green lists), and the per-token numbers are expanded from that 64-bit seed with
SplitMix64, written out below in plain uint64 arithmetic so llama.cpp serving, transformers
serving and offline detection agree bit for bit.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TOKEN_SALT = np.uint64(0xD1B54A32D192ED03)
_INV_2_53 = 1.0 / float(1 << 53)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (wrapping arithmetic, no global state)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def to_unit(x: np.ndarray) -> np.ndarray:
    """Top 53 bits of a uint64 as a float64 in [0, 1)."""
    return (x >> np.uint64(11)).astype(np.float64) * _INV_2_53


def derive_key(secret: bytes) -> bytes:
    """A fixed-length 32-byte PRF key from a secret of any length (BLAKE2b keys are <= 64 bytes)."""
    return hashlib.blake2b(secret, digest_size=32, person=b"dg-wm-key").digest()


class KeyedHash:
    """``u(context, token)`` for one key, with an LRU cache of whole-vocabulary rows.

    A generation step needs ``u`` for all ~49k vocabulary ids of one context; that row costs a few
    numpy passes, and contexts repeat a lot (h = 1 means one row per previous token), so rows are
    cached. Detection needs only single entries and never builds rows.
    """

    def __init__(self, secret: bytes, cache_size: int = 4096):
        self._key = derive_key(secret)
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._id_hash: np.ndarray | None = None
        # engines may run requests on several threads; OrderedDict reordering is not atomic
        self._lock = threading.Lock()

    # -- context seeds ------------------------------------------------------------------
    def context_seed(self, context: Sequence[int]) -> int:
        data = np.asarray(context, dtype="<i8").tobytes()
        digest = hashlib.blake2b(data, digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "little")

    def uniform(self, context: Sequence[int], token: int) -> float:
        """One keyed uniform for (context, token); what detection calls per scored token."""
        seed = np.array([self.context_seed(context)], dtype=np.uint64)
        t = np.array([token], dtype=np.uint64)
        return float(to_unit(splitmix64(seed ^ splitmix64(t ^ _TOKEN_SALT)))[0])

    def uniform_row(self, context: Sequence[int], vocab_size: int) -> np.ndarray:
        """Keyed uniforms for every token id in [0, vocab_size) after ``context`` (cached)."""
        key = tuple(int(c) for c in context)
        row = self._cached(key, vocab_size)
        if row is not None:
            return row
        seed = np.uint64(self.context_seed(key))
        t = np.arange(vocab_size, dtype=np.uint64)
        row = to_unit(splitmix64(seed ^ splitmix64(t ^ _TOKEN_SALT)))
        self._remember(key, row)
        return row

    def _cached(self, key: tuple, vocab_size: int) -> np.ndarray | None:
        with self._lock:
            row = self._cache.get(key)
            if row is None or row.shape[0] < vocab_size:
                return None
            self._cache.move_to_end(key)
            return row[:vocab_size]

    def _remember(self, key: tuple, row: np.ndarray) -> None:
        with self._lock:
            self._cache[key] = row
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    # -- self-seeding (min-hash over the window including the candidate) ----------------
    def id_hashes(self, vocab_size: int) -> np.ndarray:
        """A keyed 64-bit hash per token id; the self-seeding anchor is the minimum of these."""
        if self._id_hash is None or self._id_hash.shape[0] < vocab_size:
            seed = np.uint64(self.context_seed([-1]))  # a domain separate from real contexts
            ids = np.arange(max(vocab_size, 65536), dtype=np.uint64)
            self._id_hash = splitmix64(seed ^ splitmix64(ids))
        return self._id_hash[:vocab_size]

    def _id_hash_of(self, tokens: np.ndarray) -> np.ndarray:
        top = int(tokens.max()) + 1 if tokens.size else 1
        return self.id_hashes(max(top, 65536))[tokens]

    def self_seed_anchor(self, context: Sequence[int], token: int) -> int:
        ids = np.asarray([*context, token], dtype=np.int64)
        return int(self._id_hash_of(ids).min())

    def self_seeded_uniform(self, context: Sequence[int], token: int) -> float:
        anchor = np.array([self.self_seed_anchor(context, token)], dtype=np.uint64)
        tok = np.array([token], dtype=np.uint64)
        return float(to_unit(splitmix64(anchor ^ splitmix64(tok ^ _TOKEN_SALT)))[0])

    def self_seeded_row(self, context: Sequence[int], vocab_size: int) -> np.ndarray:
        """Row of self-seeded uniforms: the seed for candidate t is min(hash(window ids), hash(t)).

        Including the candidate in the seed (Kirchenbauer et al. 2023b, "SelfHash") makes the
        green list survive edits to the window better and removes the one-token "context"
        an attacker could probe.
        """
        key = ("self",) + tuple(int(c) for c in context)
        row = self._cached(key, vocab_size)
        if row is not None:
            return row
        hv = self.id_hashes(vocab_size)
        ctx = np.asarray(context, dtype=np.int64)
        ctx_min = self._id_hash_of(ctx).min() if ctx.size else np.uint64(0xFFFFFFFFFFFFFFFF)
        anchor = np.minimum(hv, ctx_min)
        t = np.arange(vocab_size, dtype=np.uint64)
        row = to_unit(splitmix64(anchor ^ splitmix64(t ^ _TOKEN_SALT)))
        self._remember(key, row)
        return row
