"""A bigram 'model' for watermark tests: next-token logits depend on the last token only."""

import numpy as np

from distillguard.watermark.schemes import SchemeParams, Watermark


def sample(table: np.ndarray, params: SchemeParams | None, key: bytes, prompt: list[int], n: int,
           seed: int | np.random.Generator, temperature: float) -> list[int]:
    """``n`` tokens after ``prompt``, watermarked with ``params`` under ``key`` (None: plain sampling)."""
    proc = Watermark(params, key).processor(temperature) if params else None
    r = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    ids = list(prompt)
    vocab = table.shape[-1]
    for _ in range(n):
        logits = table[ids[-1]]
        out = proc(np.array(ids), logits) if proc else logits
        z = out.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        ids.append(int(r.choice(vocab, p=p / p.sum())))
    return ids[len(prompt):]
