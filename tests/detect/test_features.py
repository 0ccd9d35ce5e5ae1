from distillguard.detect.features import BehaviourState


def _feed(b: BehaviourState, times, request, rp=0.0, system=None):
    for t in times:
        b.update(t, request, 100, 20, system, rp, "text", 2048)


def test_harvesting_detects_logprobs_n_and_maximal_tokens():
    h, p = BehaviourState(), BehaviourState()
    _feed(h, range(0, 300, 10), {"messages": [], "logprobs": True, "top_logprobs": 5, "max_tokens": 2048})
    _feed(p, range(0, 300, 10), {"messages": [], "max_tokens": 256})
    assert h.harvesting()[0] >= 0.99 and "logprobs" in h.harvesting()[1]
    assert p.harvesting()[0] == 0.0
    n = BehaviourState()
    _feed(n, range(10), {"messages": [], "n": 4})
    assert n.harvesting()[0] >= 0.99


def test_time_regularity_script_vs_bursty_person():
    script, person = BehaviourState(), BehaviourState()
    _feed(script, [i * 60.0 + (i % 3) for i in range(100)], {"messages": []})
    times, t = [], 0.0
    for s in range(10):  # ten sessions of 5 quick requests, hours apart
        for _ in range(5):
            times.append(t)
            t += 40
        t += 20_000 + s * 3_000
    _feed(person, times, {"messages": []})
    assert script.time_regularity()[0] > 0.8
    assert person.time_regularity()[0] < 0.2


def test_param_uniformity_needs_explicit_params():
    fixed, default = BehaviourState(), BehaviourState()
    _feed(fixed, range(30), {"messages": [], "max_tokens": 1024, "temperature": 0.7})
    _feed(default, range(30), {"messages": []})
    assert fixed.param_uniformity()[0] == 1.0
    assert default.param_uniformity()[0] == 0.0


def test_single_turn_and_followups():
    single, chat = BehaviourState(), BehaviourState()
    _feed(single, range(20), {"messages": [{"role": "user", "content": "q"}]})
    _feed(chat, range(20), {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                         {"role": "user", "content": "and?"}]})
    assert single.single_turn_share()[0] == 1.0
    assert chat.single_turn_share()[0] == 0.0


def test_reasoning_share_and_fixed_system_prompt():
    b = BehaviourState()
    _feed(b, range(10), {"messages": []}, rp=0.9, system="abc")
    _feed(b, range(10, 20), {"messages": []}, rp=0.1, system="abc")
    assert b.reasoning()[0] == 0.5
    assert b.fixed_system_prompt()[0] == 1.0


def test_volume_grows_with_requests():
    small, big = BehaviourState(), BehaviourState()
    _feed(small, range(5), {"messages": []})
    _feed(big, range(3000), {"messages": []})
    assert big.volume()[0] > small.volume()[0] + 0.3


def test_persistence_counts_hours_and_days_not_speed():
    """300 requests in 40 minutes (a benchmark pass) vs 300 spread over 30 hours (a campaign)."""
    burst, campaign = BehaviourState(), BehaviourState()
    _feed(burst, [i * 8.0 for i in range(300)], {"messages": []})
    _feed(campaign, [i * 360.0 for i in range(300)], {"messages": []})
    assert burst.persistence()[0] == 0.0
    assert campaign.persistence()[0] == 1.0
    assert "clock hour" in campaign.persistence()[1]


def test_data_generation_share():
    b = BehaviourState()
    for i in range(10):
        b.update(float(i), {"messages": []}, 10, 10, None, 0.0, f"prompt {i}", 2048, datagen_p=0.9 if i < 4 else 0.0)
    v, detail = b.data_generation()
    assert v == 0.4 and "prompt 0" in detail
