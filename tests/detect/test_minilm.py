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
