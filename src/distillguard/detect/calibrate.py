"""Calibrate the operating threshold on benign traffic to a target account false-positive rate.

The benign log's accounts are split by a hash of the account name: a quarter supplies the benign
reference sample for the topic signals (stored in the calibration file; a few prompts per account
is all it needs), the other three quarters are held apart from the reference and their accounts'
peak risks set the threshold. The threshold is the smallest value at
which at most ``floor(target_fpr * N)`` of those N benign accounts would be flagged. With N below
``1 / target_fpr`` that means "above every benign account seen", and the file says so
(``resolution``). Attack traffic is never used here.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.detect.config import DetectConfig
from distillguard.detect.embed import Embedder
from distillguard.detect.online import OnlineDetector, iter_batches
from distillguard.detect.replay import sorted_within_window
from distillguard.detect.templates import user_text
from distillguard.events import ExchangeEvent

REFERENCE_SIZE = 512
REFERENCE_PER_ACCOUNT = 4
MIN_ACCOUNTS = 20


class CalibrationError(ValueError):
    pass


def is_reference_account(account: str) -> bool:
    """A quarter of the benign accounts give the reference sample; the rest are scored."""
    return hashlib.blake2b(account.encode(), digest_size=2).digest()[0] & 3 == 0


def threshold_for_fpr(scores: list[float], target_fpr: float) -> tuple[float, int]:
    """Smallest threshold flagging at most floor(target_fpr * N) of the scores (flag: s >= t).
    Returns (threshold, allowed false positives)."""
    if not scores:
        raise CalibrationError("no benign accounts to calibrate on")
    s = sorted(scores, reverse=True)
    k = math.floor(target_fpr * len(s) + 1e-9)
    boundary = s[k] if k < len(s) else s[-1]
    return float(np.nextafter(boundary, np.inf)), k


def reference_sample(events: list[ExchangeEvent], seed: int = 0) -> list[str]:
    """Up to REFERENCE_SIZE prompts from the reference half, at most a few per account."""
    per: dict[str, list[str]] = defaultdict(list)
    for ev in events:
        if is_reference_account(ev.account):
            t = user_text(ev.request).strip()
            if t:
                per[ev.account].append(t)
    rng = random.Random(seed)
    pool: list[str] = []
    for acct in sorted(per):
        texts = sorted(set(per[acct]))
        rng.shuffle(texts)
        pool.extend(texts[:REFERENCE_PER_ACCOUNT])
    rng.shuffle(pool)
    return pool[:REFERENCE_SIZE]


def calibrate(events: list[ExchangeEvent], *, target_fpr: float = 0.001, config: DetectConfig | None = None,
              embedder: Embedder | None = None, detector_factory: Callable[..., OnlineDetector] | None = None,
              progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    if not 0 < target_fpr < 1:
        raise CalibrationError(f"--target-fpr must be between 0 and 1 (got {target_fpr})")
    accounts = {ev.account for ev in events}
    scored = sorted(a for a in accounts if not is_reference_account(a))
    if len(accounts) < MIN_ACCOUNTS:
        raise CalibrationError(f"benign log has {len(accounts)} accounts; calibration needs at least {MIN_ACCOUNTS} "
                               f"(ideally {math.ceil(1 / target_fpr):,}+ for a {target_fpr:g} false-positive rate)")
    cfg = (config or DetectConfig()).model_copy()
    cfg.threshold_file = None
    ref = reference_sample(events) if embedder is not None else []
    if embedder is not None and len(ref) < 8:
        raise CalibrationError("benign log has too few prompts for a reference sample (need 8+)")
    det = (detector_factory or OnlineDetector)(cfg, embedder=embedder, threshold=1.0 + 1e-9,
                                               reference_prompts=ref or None)
    ordered = list(sorted_within_window(events, window=len(events) + 1))
    det.process_stream(iter_batches(ordered, 256), on_batch=progress)
    det.finish()
    # all accounts are replayed (linking and population context as in production); only the
    # accounts held apart from the reference set the threshold
    scores = [det.accounts[a].score for a in scored]
    thr, k = threshold_for_fpr(scores, target_fpr)
    n = len(scores)
    achieved = sum(1 for x in scores if x >= thr) / n
    return {
        "threshold": thr,
        "target_fpr": target_fpr,
        "accounts_scored": n,
        "accounts_total": len(accounts),
        "allowed_false_positives": k,
        "achieved_fpr": achieved,
        "resolution": (f"{n} benign accounts: the finest FPR step is {1 / n:.4g}" +
                       ("; fewer accounts than 1/target, so the threshold sits above every benign account seen"
                        if n < 1 / target_fpr else "")),
        "score_quantiles": {str(q): float(np.quantile(scores, q)) for q in (0.5, 0.9, 0.99, 0.999)},
        "events": len(events),
        "embedder": embedder.name if embedder is not None else None,
        "reference_prompts": ref,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }


def write_calibration(data: dict[str, Any], out: Path | str) -> None:
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
