import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from distillguard.detect.traffic import Mix, build_traffic, load_corpora  # noqa: E402

SMALL_MIX = Mix(searcher=25, app_user=8, chatter=10, tutor=5, coder=4, rag_app=1, researcher=1, gsm8k_sweep=1,
                code_sweep=0, template_generator=1, slow_and_low=1, paraphraser=0, with_cover=0,
                hydras=((20, "gsm8k"),))


@pytest.fixture(scope="session")
def small_traffic():
    b = build_traffic(load_corpora("report"), SMALL_MIX, seed=3, days=6)
    return b.sorted_events(), b.labels()


@pytest.fixture(scope="session")
def scorer():
    from distillguard.detect.reasoning import default_scorer

    return default_scorer()
