import numpy as np
import pytest
import torch

from distillguard.distill.export import export, permute_qk


def test_permute_qk_is_a_permutation():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    p = permute_qk(w, 2)
    assert sorted(p.ravel().tolist()) == sorted(w.ravel().tolist())
    assert not np.array_equal(p, w)


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_gguf_round_trip_llamacpp(collected, tmp_path, dtype):
    """The exported GGUF loads in llama.cpp, gives the transformers model's logits, and generates."""
    from llama_cpp import Llama

    from distillguard.distill.data import prompt_ids
    from distillguard.distill.modelio import load_model

    s = export(collected.student_init_path(), tmp_path / "export", dtype)
    assert (s.hf_dir / "model.safetensors").is_file() and s.gguf_path.is_file()
    model, tok = load_model(s.hf_dir)
    ids = prompt_ids(tok, [{"role": "user", "content": "What is the capital of France?"}])
    with torch.no_grad():
        hf_logits = model(torch.tensor([ids])).logits[0].numpy()
    llm = Llama(str(s.gguf_path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    try:
        assert llm.tokenize(b"Hello world, 12345!", add_bos=False, special=False) == tok("Hello world, 12345!")["input_ids"]
        llm.eval(ids)
        cpp_logits = np.array(llm.scores[: len(ids)])
        corr = np.corrcoef(hf_logits.ravel(), cpp_logits.ravel())[0, 1]
        assert corr > (0.999 if dtype == "f32" else 0.98), corr
        if dtype == "f32":
            assert (hf_logits.argmax(-1) == cpp_logits.argmax(-1)).mean() > 0.9
    finally:
        llm.close()
    # the gateway's engine serves it
    from distillguard.engines.base import SamplingParams
    from distillguard.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(s.gguf_path, model_name="student", n_ctx=256, n_threads=1)
    res = engine.generate_sync([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=5, temperature=0))
    assert res.completion_tokens >= 1 and res.choices[0].finish_reason in {"stop", "length"}
