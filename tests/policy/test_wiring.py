"""build_policy / chain: the one-call wiring the gateway uses."""

from __future__ import annotations

from pathlib import Path

from distillguard.config import Settings
from distillguard.policy.wiring import build_policy, chain, shutdown_policy


class _Det:
    threshold = 0.77


def test_build_policy_anchors_on_the_detector_threshold_and_stops_cleanly(tmp_path: Path) -> None:
    settings = Settings()
    policy = build_policy(settings, None, detector=_Det(), start_threads=False)
    assert policy.compiled.threshold == 0.77 and policy.board.threshold == 0.77
    policy.watch(tmp_path / "missing.toml", 0.05)
    shutdown_policy(policy)


def test_chain_runs_every_callback_even_if_one_fails() -> None:
    seen: list[str] = []

    def bad(det, changed):  # noqa: ANN001, ANN202
        raise RuntimeError("boom")

    def good(det, changed):  # noqa: ANN001, ANN202
        seen.extend(sorted(changed))

    chain(bad, None, good)(object(), {"a", "b"})
    assert seen == ["a", "b"]
