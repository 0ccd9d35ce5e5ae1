"""Per-persona signal profile on the TUNE split (attackers included): which signals separate the
hard benign personas from the attackers, at each account's peak risk. A development aid for the
risk model; it never reads the report split.

    nice -n 10 .venv/bin/python bench/detect_diagnose.py [--scale 0.4] [--no-embeddings]

Embeddings are cached on disk (bench/cache/detect_embeddings.npz) so reruns are fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distillguard.detect.config import DetectConfig  # noqa: E402
from distillguard.detect.online import OnlineDetector  # noqa: E402
from distillguard.detect.traffic import Mix, build_traffic, load_corpora  # noqa: E402
from distillguard.events import ExchangeEvent  # noqa: E402

CACHE = ROOT / "bench/cache/detect_embeddings.npz"


def disk_cached(emb):
    """Preload the embedder's in-memory cache from disk; returns a save() callable."""
    if CACHE.exists():
        z = np.load(CACHE)
        for k, v in zip(z["keys"], z["vecs"], strict=True):
            emb.cache.put(bytes(k), v)
    emb.cache.capacity = 10**7

    def save():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        keys = list(emb.cache._d)
        np.savez(CACHE, keys=np.array(keys, dtype="S12"), vecs=np.stack([emb.cache._d[k] for k in keys]))
    return save


class Recorder(OnlineDetector):
    """Keeps the signal values at each account's own peak risk."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.peak_sig: dict[str, dict[str, float]] = {}

    def _update(self, ev, text, rp, vec, phi, dp=0.0):
        super()._update(ev, text, rp, vec, phi, dp)
        st = self.accounts[ev.account]
        if st.own_risk >= st.peak_own - 1e-12:
            self.peak_sig[ev.account] = {s.name: round(float(s.value), 3) for s in self.signals(st, detail=False)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--no-embeddings", action="store_true")
    args = ap.parse_args()
    cfg = DetectConfig()
    emb, save = None, None
    if not args.no_embeddings:
        from distillguard.detect.embed import MiniLMEmbedder
        emb = MiniLMEmbedder(max_seq_length=cfg.embed_max_seq_length, batch_size=cfg.embed_batch_size, threads=2)
        save = disk_cached(emb)
    tr = build_traffic(load_corpora("tune"), Mix().scaled(args.scale), seed=args.seed)
    labels = tr.labels()
    events = [ExchangeEvent.model_validate(e) for e in tr.sorted_events()]
    det = Recorder(cfg, embedder=emb, threshold=0.99)
    t0 = time.time()
    B = 256
    for i in range(0, len(events), B):
        det.process_batch(events[i:i + B])
    det.finish()
    print(f"{len(events):,} events in {time.time() - t0:.0f}s", file=sys.stderr)
    if save:
        save()
    by = defaultdict(list)
    for a, st in det.accounts.items():
        by[labels[a]["kind"]].append((st.score, st.peak_own, st.requests_before_flag, st.behaviour.n, det.peak_sig.get(a, {})))
    names = sorted({k for v in det.peak_sig.values() for k in v})
    short = {n: n[:6] for n in names}
    print(f"{'kind':18s} {'n':>4s} {'score':>6s} {'p90':>6s} {'own':>6s} " + " ".join(f"{short[n]:>6s}" for n in names))
    for kind, rows in sorted(by.items()):
        sc = np.array([r[0] for r in rows])
        own = np.array([r[1] for r in rows])
        # signals of the highest-scoring half (the hard cases)
        top = sorted(rows, key=lambda r: -r[1])[: max(1, len(rows) // 2)]
        mean = {n: np.mean([r[4].get(n, 0.0) for r in top]) for n in names}
        print(f"{kind:18s} {len(rows):4d} {np.median(sc):6.3f} {np.quantile(sc, .9):6.3f} {np.median(own):6.3f} "
              + " ".join(f"{mean[n]:6.2f}" for n in names))
    dump_extremes(det, labels, names)




def dump_extremes(det, labels, names, k=12):
    """The highest-scoring benign accounts and every attacker, with their peak signals."""
    rows = sorted(det.accounts.items(), key=lambda kv: -kv[1].score)
    short = " ".join(f"{n[:6]:>6s}" for n in names)
    print(f"\n{'account':28s} {'score':>6s} {'n':>5s} {'rbf':>5s} " + short)
    ben = [(a, st) for a, st in rows if labels[a]["label"] == 0][:k]
    att = [(a, st) for a, st in rows if labels[a]["label"] == 1 and not labels[a]["group"]]
    for a, st in ben + [("--", None)] + att:
        if st is None:
            print("-" * 40)
            continue
        sig = det.peak_sig.get(a, {})
        print(f"{a[:28]:28s} {st.score:6.3f} {st.behaviour.n:5d} {str(st.requests_before_flag):>5s} "
              + " ".join(f"{sig.get(n, 0.0):6.2f}" for n in names))


if __name__ == "__main__":
    main()
