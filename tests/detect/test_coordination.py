import numpy as np

from distillguard.detect.coordination import LinkState, Linker, prompt_overlap


def _links(buckets, prompts):
    ls = LinkState()
    for b in buckets:
        ls.add_bucket(b)
    for h in prompts:
        ls.add_prompt_hash(h)
    return ls


def test_hydra_members_link_and_benign_sharing_one_thing_do_not():
    lk = Linker(max_shared=10, min_weight=1.6, min_requests=1)
    hydra = [f"h{i}" for i in range(6)]
    benign = [f"b{i}" for i in range(6)]
    # hydra: one template across members, lock-step clock, disjoint prompts from one source
    for i, a in enumerate(hydra):
        lk.observe_template(a, [b for b in hydra if b != a], "Solve step by step: ...")
    links = {a: _links(range(100, 120), range(i * 100, i * 100 + 30)) for i, a in enumerate(hydra)}
    # benign: all share the default SDK user agent, and two share an office NAT ip; separate clocks
    for i, a in enumerate(benign):
        lk.observe(a, "user_agent", "OpenAI/Python 1.54.0")
        links[a] = _links(range(i * 50, i * 50 + 10), range(10_000 + i * 100, 10_000 + i * 100 + 30))
    lk.observe("b0", "ip", "203.0.113.9")
    lk.observe("b1", "ip", "203.0.113.9")
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(16)
    centroids = {a: centre + 0.05 * rng.standard_normal(16) for a in hydra}
    centroids.update({a: rng.standard_normal(16) for a in benign})
    counts = {a: 30 for a in hydra + benign}
    clusters = lk.recompute({}, centroids, counts, links)
    assert len(clusters) == 1
    (cid, members), = clusters.items()
    assert members == sorted(hydra)
    value, detail = lk.describe(cid)
    assert value > 0.4 and "template" in detail and "lockstep" in detail


def test_common_attribute_links_nobody():
    lk = Linker(max_shared=3, min_weight=1.0, min_requests=1)
    for i in range(5):
        lk.observe(f"a{i}", "ip", "198.51.100.1")
    assert ("ip", "198.51.100.1") in lk.common
    clusters = lk.recompute({}, {}, {f"a{i}": 10 for i in range(5)}, {f"a{i}": LinkState() for i in range(5)})
    assert clusters == {}


def test_prompt_overlap_sketch():
    a, b, c = LinkState(), LinkState(), LinkState()
    for h in range(1000):
        a.add_prompt_hash(h * 7919 % 100_003)
        b.add_prompt_hash(h * 7919 % 100_003)
        c.add_prompt_hash(200_000 + h)
    assert len(a.prompt_sketch) == 64
    assert prompt_overlap(a.prompt_sketch, b.prompt_sketch) == 1.0
    assert prompt_overlap(a.prompt_sketch, c.prompt_sketch) == 0.0


def test_same_public_benchmark_through_same_sdk_does_not_link():
    """Independent researchers who run one public benchmark with its standard prompt through the
    same SDK share template, topic and user agent, but neither infrastructure nor clock."""
    lk = Linker(max_shared=10, min_weight=1.6, min_requests=1)
    ra, rb = "researcher-a", "researcher-b"
    lk.observe_template(ra, [rb], "Solve step by step: ...")
    for a in (ra, rb):
        lk.observe(a, "user_agent", "OpenAI/Python 1.54.0")
    links = {ra: _links(range(0, 6), range(0, 200)), rb: _links(range(500, 506), range(150, 350))}
    rng = np.random.default_rng(1)
    centre = rng.standard_normal(16)
    centroids = {ra: centre + 0.05 * rng.standard_normal(16), rb: centre + 0.05 * rng.standard_normal(16)}
    assert lk.recompute({}, centroids, {ra: 200, rb: 200}, links) == {}
    # the same pair run from one IP is one operator after all
    lk.observe(ra, "ip", "203.0.113.7")
    lk.observe(rb, "ip", "203.0.113.7")
    assert list(lk.recompute({}, centroids, {ra: 200, rb: 200}, links).values()) == [[ra, rb]]
