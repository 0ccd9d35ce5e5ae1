import numpy as np

from distillguard.detect.templates import MinHasher, TemplateTracker, jaccard, shingles, skeleton, system_prompt, user_text

TEMPLATE = "Solve the following problem. Show your complete reasoning before giving the final answer.\n\n{q}"
QS = ["Tom has 5 apples and buys 7 more. How many apples does he have?",
      "A train leaves at 3pm travelling 60 km/h. When does it arrive 180 km away?",
      "Sara reads 12 pages a day. How long to finish a 300-page book?",
      "What is the total cost of 4 shirts at $15.50 each?"]


def test_skeleton_masks_slots():
    s = skeleton('Translate "bonjour tout le monde" into 3 languages, mentioning pronunciation')
    assert "<q>" in s and "<n>" in s and "<w>" in s and "bonjour" not in s


def test_same_template_different_slots_is_near_duplicate():
    mh = MinHasher()
    sigs = [mh.signature(shingles(TEMPLATE.format(q=q))) for q in QS]
    plain = [mh.signature(shingles(q)) for q in QS]
    assert min(jaccard(sigs[0], s) for s in sigs[1:]) >= 0.55
    assert max(jaccard(plain[0], s) for s in plain[1:]) < 0.55


def test_tracker_reuse_rate_separates_templated_from_varied():
    mh = MinHasher()
    templ, varied = TemplateTracker(), TemplateTracker()
    for i in range(40):
        q = QS[i % 4] + f" ({i})"
        templ.add(mh.signature(shingles(TEMPLATE.format(q=q))), q)
    for q in ["who wrote hamlet", "best pizza dough recipe", "how tall is mount everest in feet",
              "Write a haiku about rain.", "Fix this code: print(x", "when did world war 2 end",
              "Give me a workout plan", "translate hello to german"] * 2:
        varied.add(mh.signature(shingles(q + "?")), q)
    assert templ.reuse_rate() > 0.9
    assert templ.top().count >= 39
    assert len(templ.table) <= templ.slots
    assert varied.reuse_rate() < 0.6


def test_tracker_state_is_bounded():
    mh = MinHasher()
    t = TemplateTracker(slots=4)
    rng = np.random.default_rng(0)
    for i in range(100):
        words = " ".join("".join(chr(97 + c) for c in rng.integers(0, 26, 5)) for _ in range(12))
        t.add(mh.signature(shingles(words)), words)
    assert len(t.table) == 4


def test_system_prompt_and_user_text():
    req = {"messages": [{"role": "system", "content": "You are X."}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]}
    assert system_prompt(req) == "You are X."
    assert user_text(req) == "again"
    assert user_text({"prompt": "def f():"}) == "def f():"
    assert system_prompt({"prompt": "x"}) is None
