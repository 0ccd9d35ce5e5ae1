"""The batched local teacher (teacher.engine = "batched") and the float copy of a GGUF teacher."""

import asyncio

import pytest
import torch

from distillguard.distill.collect import collect, load_records
from distillguard.distill.config import CollectConfig, DistillConfig, PromptSource, TeacherConfig
from distillguard.distill.teachers import BatchedLocalTeacher, build_teacher, split_reasoning

MESSAGES = [
    [{"role": "user", "content": "Name three rivers."}],
    [{"role": "user", "content": "What is the capital of France? Answer in one word, then explain why it matters."}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Write a haiku about the sea, the wind and a small boat far away."}],
]


@pytest.fixture(scope="module")
def batched(tiny_teacher):
    return BatchedLocalTeacher(tiny_teacher, "tiny", n_threads=1, batch_size=3)


def test_batched_greedy_equals_one_at_a_time(batched):
    """Left padding, rows leaving the batch and the KV cache must not change any answer."""
    cfg = CollectConfig(max_tokens=12, temperature=0.0, top_logprobs=2)
    together = asyncio.run(batched.answer_batch(MESSAGES, cfg))
    for msgs, got in zip(MESSAGES, together):
        ids = batched.prompt_ids(msgs)
        with torch.no_grad():
            out = batched.model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=12, do_sample=False, eos_token_id=sorted(batched.end_ids), pad_token_id=batched.tok.pad_token_id,
            )
        new = out[0, len(ids):].tolist()
        stopped = bool(new) and new[-1] in batched.end_ids
        alone = [t for t in new if t not in batched.end_ids]
        assert got.completion_tokens == len(alone)
        assert got.text == split_reasoning(batched.tok.decode(alone, skip_special_tokens=True))[0]
        assert got.finish_reason == ("stop" if stopped else "length")
        assert got.prompt_tokens == len(ids)
        # top-k logprobs: one entry per answer token; the chosen (greedy) token is the top one
        assert len(got.logprobs) == got.completion_tokens
        for e in got.logprobs:
            assert len(e["top"]) == 2 and e["top"][0]["logprob"] >= e["top"][1]["logprob"]
            assert e["logprob"] == pytest.approx(e["top"][0]["logprob"])


def test_sampling_is_seeded(batched):
    cfg = CollectConfig(max_tokens=8, temperature=1.0, seed=7)
    a = asyncio.run(batched.answer_batch(MESSAGES[:2], cfg))
    b = asyncio.run(batched.answer_batch(MESSAGES[:2], cfg))
    assert [x.text for x in a] == [x.text for x in b]


def _batched_run(tmp_path, tiny_teacher, prompt_file, limit, **collect_settings):
    """A config that collects ``limit`` built-in prompts with the batched tiny teacher, and that teacher."""
    cfg = DistillConfig(
        workdir=tmp_path,
        teacher=TeacherConfig(model_path=tiny_teacher, n_threads=1, engine="batched"),
        collect=CollectConfig(sources=[PromptSource(path=prompt_file, field="prompt", limit=limit)], **collect_settings),
    )
    return cfg, build_teacher(cfg.teacher, cfg.collect)


def test_collect_with_batched_teacher_resumes(tmp_path, tiny_teacher, prompt_file):
    cfg, teacher = _batched_run(tmp_path, tiny_teacher, prompt_file, limit=7, max_tokens=4, batch_size=3)
    assert isinstance(teacher, BatchedLocalTeacher)
    cfg5 = cfg.model_copy(update={"collect": cfg.collect.model_copy(update={"max_prompts": 5})})
    s = collect(cfg5, teacher=teacher, progress=False)
    assert s.asked == 5 and s.already == 0
    s = collect(cfg, teacher=teacher, progress=False)
    assert s.asked == 2 and s.already == 5
    recs = load_records(cfg.dataset_path())
    assert len({r["id"] for r in recs}) == len(recs) == 7
    assert all(r["teacher"] == "smollm2" and r["completion_tokens"] <= 4 for r in recs)


def test_collect_time_budget_stops_after_a_batch_and_resumes(tmp_path, tiny_teacher, prompt_file):
    cfg, teacher = _batched_run(tmp_path, tiny_teacher, prompt_file, limit=7, max_tokens=4, batch_size=3, max_minutes=1e-6)
    s = collect(cfg, teacher=teacher, progress=False)
    assert s.stopped_by_time and s.asked == 3 and s.already == 0  # one batch, then the budget is spent
    cfg.collect.max_minutes = None
    s = collect(cfg, teacher=teacher, progress=False)
    assert not s.stopped_by_time and s.asked == 4 and s.already == 3
    assert len({r["id"] for r in load_records(cfg.dataset_path())}) == 7


def test_batches_do_not_run_shortest_first(tmp_path, tiny_teacher, prompt_file):
    """A collection cut short must be a fair sample: batch order is shuffled (seeded), not by length."""
    cfg, teacher = _batched_run(tmp_path, tiny_teacher, prompt_file, limit=24, max_tokens=1, batch_size=2)
    collect(cfg, teacher=teacher, progress=False)
    lengths = [r["prompt_tokens"] for r in load_records(cfg.dataset_path())]
    firsts = lengths[::2]  # each batch holds two prompts of neighbouring length; 12 batches
    assert firsts != sorted(firsts)  # 12 batches in sorted order by chance: 1 in 12! for a seeded shuffle
    collect(cfg.model_copy(update={"workdir": tmp_path / "again"}), teacher=teacher, progress=False)
    again = [r["prompt_tokens"] for r in load_records((tmp_path / "again") / "teacher.jsonl")]
    assert again == lengths  # the same seed, the same order


def test_gguf_teacher_is_converted_once(collected, tmp_path, monkeypatch):
    """A GGUF teacher is de-quantized once into a float safetensors copy; later loads read the copy."""
    from distillguard.distill import modelio
    from distillguard.distill.export import export

    monkeypatch.setenv("DISTILLGUARD_CACHE", str(tmp_path / "cache"))
    gguf = export(collected.student_init_path(), tmp_path / "export", "f32").gguf_path
    direct, _ = modelio.load_model(gguf)
    modelio._TEACHERS.clear()
    first, tok = modelio.load_teacher(gguf)
    copy = modelio.gguf_cache_dir(gguf)
    assert (copy / "model.safetensors").is_file() and not list(copy.parent.glob("*.tmp*"))
    modelio._TEACHERS.clear()
    calls = []
    real = modelio.load_model
    monkeypatch.setattr(modelio, "load_model", lambda p, threads=None: calls.append(p) or real(p, threads))
    second, tok2 = modelio.load_teacher(gguf)
    assert calls == [copy]  # read from the copy, not the GGUF
    assert tok2.get_vocab() == tok.get_vocab() and tok2.chat_template == tok.chat_template
    for a, b, c in zip(direct.state_dict().values(), first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not any(p.requires_grad for p in second.parameters())
    assert modelio.load_teacher(gguf)[0] is second  # once per process
    modelio._TEACHERS.clear()
