"""Sybil cohorts: new accounts that start one pipeline together are linked at once."""

import random

from distillguard.detect.config import DetectConfig, RiskWeights
from distillguard.detect.coordination import CohortTracker
from distillguard.detect.online import OnlineDetector
from distillguard.detect.risk import Signal, combine
from distillguard.events import ExchangeEvent

T0 = 1_763_600_000.0
QUESTIONS = [f"Natalia sold clips to {i} of her friends in April, and then she sold half as many clips in May. "
             f"How many clips did Natalia sell altogether in April and May if each friend bought {i % 7 + 2}?"
             for i in range(400)]
HYDRA_TMPL = "Solve the following problem. Show your complete reasoning before giving the final answer.\n\n{q}"
PARAMS = {"temperature": 0.8, "max_tokens": 2048}


def _ev(i: int, account: str, ts: float, text: str, params: dict | None = None, ua: str = "OpenAI/Python 1.54.0",
        ip: str | None = None) -> ExchangeEvent:
    req = {"model": "smollm2", "messages": [{"role": "user", "content": text}], **(PARAMS if params is None else params)}
    return ExchangeEvent.model_validate({
        "id": f"ev_{i:09d}", "ts": ts, "account": account, "key": f"key_{account}", "ip": ip or f"198.51.{i % 200}.{i % 250 + 1}",
        "user_agent": ua, "endpoint": "/v1/chat/completions", "request": req,
        "response": {"text": "...", "finish_reason": "stop", "prompt_tokens": 60, "completion_tokens": 300},
        "status": 200, "latency_ms": 100.0, "decision": {"action": "allow", "reasons": []}})


def _hydra_window(start: float, members: list[str], first_id: int, q0: int) -> list[ExchangeEvent]:
    """Each member sends two prompts of one source through one template within 9 minutes."""
    out, k = [], 0
    for j, a in enumerate(members):
        for r in range(2):
            out.append(_ev(first_id + k, a, start + 20 * j + 250 * r, HYDRA_TMPL.format(q=QUESTIONS[q0 + k])))
            k += 1
    return sorted(out, key=lambda e: e.ts)


def _detector(**cfg) -> OnlineDetector:
    # relinking never happens in these tests: only the cohort path can link. No warm-up: the
    # detector's first event is the first hydra window here; a cohort change relinks at its event
    cfg = {"cohort_warmup_s": 0.0, "cohort_relink_every_events": 1, **cfg}
    return OnlineDetector(DetectConfig(embeddings=False, link_every_events=10**9, **cfg), embedder=None, threshold=0.8)


def test_new_accounts_started_together_on_one_template_are_linked_at_once():
    det = _detector()
    members = [f"hydra-{i:02d}" for i in range(10)]
    changed = det.process_batch(_hydra_window(T0, members, 0, 0))
    clusters = det.clusters()
    assert len(clusters) == 1 and sorted(next(iter(clusters.values()))) == members
    assert set(members) <= changed  # the board hears of the link after this batch
    v = det.verdict(members[0])
    assert v["cluster"] is not None and v["requests"] == 2
    names = [e["signal"] for e in v["evidence"]]
    assert "coordination" in names and "cohort" in names
    # the cluster as one actor: 20 requests of an eliciting template through 10 accounts born
    # together reach far more risk than any one member on its own
    st = det.accounts[members[0]]
    assert st.cluster_risk > 2 * st.own_risk
    # a member that only starts hours later, while the others are active again, joins at once
    late = "hydra-late"
    later = _hydra_window(T0 + 7200, members[:5] + [late], 100, 100)
    det.process_batch(later)
    assert det.linker.account_cluster.get(late) == det.linker.account_cluster.get(members[0])


def test_cohort_risk_flags_the_hydra_after_its_first_window():
    """With reasoning-eliciting prompts, the cohort's pooled evidence crosses a threshold that
    no single member (2 requests each) comes near."""
    det = _detector()
    members = [f"hydra-{i:02d}" for i in range(12)]
    det.process_batch(_hydra_window(T0, members, 0, 0))
    st = det.accounts[members[3]]
    assert st.own_risk < 0.3
    off = _detector(cohort_min_accounts=0)
    off.process_batch(_hydra_window(T0, members, 0, 0))
    assert off.clusters() == {}
    assert det.accounts[members[3]].score > 2 * off.accounts[members[3]].score


def test_benign_accounts_starting_together_are_not_a_cohort():
    det = _detector()
    evs, i = [], 0
    # the same public benchmark template through the same SDK, but people start hours apart
    for j in range(6):
        for r in range(3):
            evs.append(_ev(i, f"researcher-{j}", T0 + j * 3 * 3600 + 30 * r, f"Q: {QUESTIONS[i]}\nA: Let's think step by step.",
                           params={"temperature": 0.0, "max_tokens": 512}))
            i += 1
    # new accounts in the same minutes through one template, but with their own parameters or client
    for j in range(6):
        params = {"temperature": [0.2, 0.5, 0.7][j % 3], "max_tokens": [256, 512][j // 3]}
        for r in range(2):
            evs.append(_ev(i, f"app-{j}", T0 + 50 * j + 100 * r, f"Summarise this support ticket:\n\n{QUESTIONS[i]}",
                           params=params))
            i += 1
    for j in range(6):
        ua = ["OpenAI/Python 1.54.0", "OpenAI/JS 4.67.0", "curl/8.5.0", "httpx/0.27.2", "python-requests/2.32.3",
              "langchain-openai/0.2.3"][j]
        evs.append(_ev(i, f"user-{j}", T0 + 60 * j, f"Translate to French:\n\n{QUESTIONS[i]}", ua=ua))
        i += 1
    det.process_batch(sorted(evs, key=lambda e: e.ts))
    assert det.clusters() == {}
    assert det.cohorts.established() == []


def test_cohort_tracker_state_is_bounded_and_old_accounts_do_not_join():
    ct = CohortTracker(min_accounts=3, gap_s=600, max_cohorts=50, warmup_s=0.0)
    key = ("/v1/chat/completions", "m", "ua", 512, 0.7, None, None, False, None)
    rng = random.Random(0)
    words = ["why", "is", "the", "sky", "blue", "how", "do", "i", "cook", "rice", "what", "time", "zone", "fix", "my",
             "bike", "tell", "me", "a", "joke", "best", "way", "to", "learn", "go", "when", "was", "rome", "built"]
    for i in range(500):  # one-off prompts of unrelated new accounts, a minute apart
        text = " ".join(rng.choice(words) for _ in range(12)) + "?"
        ct.observe(f"a{i}", 1, T0 + 60 * i, text, key)
    assert len(ct.cohorts) <= 50 and ct.established() == []
    ct.observe("old", 5, T0 + 40_000, HYDRA_TMPL.format(q=QUESTIONS[0]), key)  # past its young requests
    ct.observe("late", 2, T0 + 40_000, HYDRA_TMPL.format(q=QUESTIONS[1]), key, born_ts=T0 + 30_000)  # born hours ago
    assert ct.account_cohort.get("old") is None and ct.account_cohort.get("late") is None
    for i in range(3):
        ct.observe(f"n{i}", 1, T0 + 40_000 + i, HYDRA_TMPL.format(q=QUESTIONS[i + 2]), key)
    assert [sorted(c.members) for c in ct.established()] == [["n0", "n1", "n2"]]


def test_accounts_born_hours_apart_on_one_template_are_no_cohort_and_a_fresh_detector_waits():
    """Shops that sign up days apart and run the same open-source app with the same client are
    no cohort, however busy they keep the template; nor are accounts a detector sees first only
    because it just started."""
    key = ("/v1/chat/completions", "m", "python-requests/2.32.3", 400, 0.0, None, None, False, None)
    ct = CohortTracker(min_accounts=3, gap_s=900, warmup_s=0.0)
    for j in range(6):
        born = T0 + j * 2 * 3600
        for r in range(4):  # each shop keeps sending; the template stays in use all day
            ct.observe(f"shop-{j}", r + 1, born + 300 * r, f"Answer using only the context below.\n{QUESTIONS[j * 4 + r]}",
                       key, born_ts=born)
    assert ct.established() == []
    fresh = CohortTracker(min_accounts=3, gap_s=900)  # default warm-up
    for i in range(5):
        fresh.observe(f"h{i}", 1, T0 + 10 * i, HYDRA_TMPL.format(q=QUESTIONS[i]), key)
    assert fresh.established() == []
    for i in range(5):
        fresh.observe(f"n{i}", 1, T0 + 7 * 3600 + 10 * i, HYDRA_TMPL.format(q=QUESTIONS[10 + i]), key)
    assert [sorted(c.members) for c in fresh.established()] == [[f"n{i}" for i in range(5)]]


def test_cohort_signal_counts_as_sustained_effort_not_as_risk_on_its_own():
    w = RiskWeights()
    base = [Signal("reasoning_elicitation", 1.0, ""), Signal("template_reuse", 1.0, ""), Signal("persistence", 0.0, "")]
    short, _ = combine(base, w, 30, 25)
    scaled_out, _ = combine(base + [Signal("cohort", 1.0, "")], w, 30, 25)
    assert scaled_out > short
    alone_a, _ = combine([Signal("cohort", 0.0, "")], w, 30, 25)
    alone_b, _ = combine([Signal("cohort", 1.0, "")], w, 30, 25)
    assert alone_a == alone_b


def test_an_account_born_with_a_cohort_on_another_template_links_through_a_shared_address():
    """One operator, two templates: an account that starts with the same client and parameters
    while a cohort runs, and sends from one of the cohort's proxy addresses, is linked at once;
    an unrelated new account behind that address (other parameters) is not."""
    det = _detector()
    members = [f"hydra-{i:02d}" for i in range(6)]
    window = _hydra_window(T0, members, 0, 0)
    proxy = window[0].ip
    other_tmpl = "Problem:\n{q}\n\nThink carefully. Put your step-by-step reasoning inside <think></think> tags."
    sibling = [_ev(900 + r, "hydra-sibling", T0 + 100 + 60 * r, other_tmpl.format(q=QUESTIONS[300 + r]), ip=proxy)
               for r in range(2)]
    stranger = [_ev(950 + r, "stranger", T0 + 130 + 60 * r, f"Translate to German: {QUESTIONS[350 + r]}",
                    params={"temperature": 0.3}, ip=proxy) for r in range(2)]
    det.process_batch(sorted(window + sibling + stranger, key=lambda e: e.ts))
    cid = det.linker.account_cluster.get(members[0])
    assert cid is not None and det.linker.account_cluster.get("hydra-sibling") == cid
    assert det.linker.account_cluster.get("stranger") is None
    # without the born-together evidence the shared address alone (one family) links nobody
    off = _detector(cohort_min_accounts=0)
    off.process_batch(sorted(window + sibling + stranger, key=lambda e: e.ts))
    off.relink()
    assert off.linker.account_cluster.get("hydra-sibling") is None
    pair = tuple(sorted(("hydra-sibling", next(a for a in members if proxy in det.accounts[a].links.ips))))
    assert {"ip", "cohort"} <= set(det.linker.pair_evidence[pair])
