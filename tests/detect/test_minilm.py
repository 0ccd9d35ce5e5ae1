import numpy as np
import pytest


@pytest.mark.slow
def test_minilm_embedder_is_real_normalised_and_cached():
    from distillguard.detect.embed import MiniLMEmbedder

    e = MiniLMEmbedder()
    v = e.embed(["How many apples are left?", "how many apples remain?", "Write a poem about the sea."])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    assert v[0] @ v[1] > v[0] @ v[2]
    e.embed(["How many apples are left?"])
    assert e.cache.hits >= 1


@pytest.mark.slow
def test_bfloat16_embeddings_agree_with_float32():
    """The auto dtype may pick bfloat16: its vectors must stay within cosine 0.995 of float32."""
    from distillguard.detect.embed import MiniLMEmbedder, bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    texts = ["A farmer has 17 sheep and buys 5 more each week. How many after 6 weeks?",
             "Write a Python function that reverses a linked list.", "What is the capital of Australia?",
             "Summarize the plot of Hamlet in two sentences.", "Let's think step by step."]
    a = MiniLMEmbedder(dtype="float32").embed(texts)
    b = MiniLMEmbedder(dtype="bfloat16").embed(texts)
    assert b.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert ((a * b).sum(axis=1) > 0.995).all()


def test_unknown_dtype_is_a_clear_error():
    from distillguard.detect.embed import MiniLMEmbedder

    with pytest.raises(ValueError, match="auto, float32 or bfloat16"):
        MiniLMEmbedder(dtype="int4")
