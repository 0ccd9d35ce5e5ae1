from distillguard.detect.embed import HashingEmbedder
from distillguard.detect.online import OnlineDetector, iter_batches
from distillguard.events import ExchangeEvent


def run(events, threshold):
    det = OnlineDetector(embedder=HashingEmbedder(), threshold=threshold)
    for b in iter_batches(events, 256):
        det.process_batch(b)
    return det


def test_flagged_at_is_an_event_time_and_truncation_does_not_change_it(small_traffic):
    raw, labels = small_traffic
    events = [ExchangeEvent.model_validate(e) for e in raw]
    full = run(events, threshold=0.8)
    ts_set = {e.ts for e in events}
    flagged = [v for v in full.verdicts() if v["flagged"]]
    assert flagged, "the small log has attackers; some must be flagged"
    own = [v for v in flagged if not labels[v["account"]]["group"]][:2]
    hydra = [v for v in flagged if labels[v["account"]]["group"]][:1]
    for v in own + hydra:
        assert v["flagged_at"] in ts_set
        cut = max(i for i, e in enumerate(events) if e.ts == v["flagged_at"])
        prefix = run(events[: cut + 1], threshold=0.8)
        pv = prefix.verdict(v["account"])
        assert pv["flagged_at"] == v["flagged_at"]
        assert pv["requests_before_flag"] == v["requests_before_flag"]
        # and one event earlier it had not been flagged yet
        before = run(events[:cut], threshold=0.8)
        if v["account"] in before.accounts:
            assert before.verdict(v["account"])["flagged_at"] is None


def test_pipelined_stream_gives_the_same_verdicts_as_batch_by_batch(small_traffic):
    """process_stream overlaps embedding with scoring; the verdicts must not change."""
    raw, _ = small_traffic
    events = [ExchangeEvent.model_validate(e) for e in raw]
    serial = run(events, threshold=0.8)
    piped = OnlineDetector(embedder=HashingEmbedder(), threshold=0.8)
    seen = []
    n = piped.process_stream(iter_batches(events, 256), on_batch=seen.append)
    assert n == len(events) == sum(seen)
    serial.finish()
    piped.finish()
    assert piped.verdicts() == serial.verdicts()
    assert piped.clusters() == serial.clusters()
