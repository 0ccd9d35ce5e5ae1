import json
import shutil

import pytest
import torch

from distillguard.distill import train as train_mod
from distillguard.distill.collect import load_records
from distillguard.distill.data import DataError, collate, make_batches
from distillguard.distill.modelio import TokenizerMismatch, load_model
from distillguard.distill.train import batch_loss, prepare, train


def _mean_loss(cfg, model_path):
    student, tok = load_model(model_path)
    teacher = load_model(cfg.teacher.model_path)[0] if cfg.train.method == "logits" else None
    examples, _ = prepare(cfg, tok)
    with torch.no_grad():
        losses = [float(batch_loss(student, teacher, collate([examples[i] for i in b], tok.pad_token_id), cfg)[0])
                  for b in make_batches(examples, 4)]
    return sum(losses) / len(losses)


@pytest.mark.slow
@pytest.mark.parametrize("method,loss", [("logits", "forward_kl"), ("sft", "forward_kl"), ("topk", "jsd")])
def test_short_run_lowers_loss(run_cfg, method, loss):
    run_cfg.train.method, run_cfg.train.loss = method, loss
    run_cfg.train.learning_rate, run_cfg.train.max_steps = 3e-3, 6
    before = _mean_loss(run_cfg, run_cfg.student_init_path())
    s = train(run_cfg, progress=False)
    after = _mean_loss(run_cfg, s.output)
    assert s.steps == 6 and (s.output / "model.safetensors").is_file()
    assert after < before, (before, after)
    assert json.loads((s.output / "distill_train.json").read_text())["method"] == method


def test_resume_from_checkpoint(run_cfg, monkeypatch):
    run_cfg.train.method, run_cfg.train.max_steps, run_cfg.train.save_every = "sft", 4, 2
    calls = {"n": 0}
    real = train_mod.batch_loss

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # die during step 4, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "batch_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(run_cfg, progress=False)
    ckpt = run_cfg.train_output() / "checkpoint"
    assert (ckpt / "trainer_state.pt").is_file()
    monkeypatch.setattr(train_mod, "batch_loss", real)
    s = train(run_cfg, progress=False)
    assert s.resumed_from == 2 and s.steps == 4
    assert not ckpt.exists()
    steps = [json.loads(x)["step"] for x in (s.output / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3, 4]  # step 3 is redone from the step-2 checkpoint
    # finished: a rerun does nothing
    assert train(run_cfg, progress=False).resumed_from == 2


def test_tokenizer_mismatch_names_sequence_kd(run_cfg, tmp_path):
    other = tmp_path / "other-student"
    shutil.copytree(run_cfg.student_init_path(), other)
    model, tok = load_model(other)
    tok.add_tokens(["<brand-new-token>"])
    tok.save_pretrained(other)
    run_cfg.train.method, run_cfg.train.student = "logits", other
    with pytest.raises(TokenizerMismatch, match=r"sequence-level KD.*method = 'sft'"):
        train(run_cfg, progress=False)


def test_topk_needs_logprobs(run_cfg, tmp_path):
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({**r, "logprobs": None}) + "\n" for r in load_records(run_cfg.dataset_path())))
    run_cfg.collect.output, run_cfg.train.method = plain, "topk"
    with pytest.raises(DataError, match="top_logprobs"):
        train(run_cfg, progress=False)


def test_logits_needs_local_teacher(run_cfg):
    from distillguard.distill.config import TeacherConfig

    run_cfg.teacher = TeacherConfig(kind="openai", url="http://127.0.0.1:9/v1")
    run_cfg.train.method = "logits"
    with pytest.raises(DataError, match="local teacher"):
        train(run_cfg, progress=False)


def test_time_budget_stops_and_saves(run_cfg):
    run_cfg.train.method, run_cfg.train.max_steps, run_cfg.train.max_minutes = "sft", 50, 1e-6
    s = train(run_cfg, progress=False)
    assert s.stopped_at == 1 and (s.output / "model.safetensors").is_file()
    assert not (s.output / "checkpoint").exists()


def test_answer_logits_match_full_forward(run_cfg):
    """The LM head run on answer positions only gives the full forward's logits at those positions."""
    from distillguard.distill.data import answer_logits

    model, tok = load_model(run_cfg.student_init_path())
    examples, _ = prepare(run_cfg, tok)
    batch = collate(examples[:4], tok.pad_token_id)
    assert batch["target_mask"].sum() > 0 and not batch["target_mask"].all()
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][batch["target_mask"]]
        part = answer_logits(model, batch)
    assert part.shape == full.shape
    torch.testing.assert_close(part, full, rtol=1e-4, atol=1e-4)


def test_bf16_mixed_precision_trains_and_saves_float32(run_cfg):
    run_cfg.train.method, run_cfg.train.precision = "logits", "bf16"
    run_cfg.train.learning_rate, run_cfg.train.max_steps = 3e-3, 6
    before = _mean_loss(run_cfg, run_cfg.student_init_path())
    s = train(run_cfg, progress=False)
    after = _mean_loss(run_cfg, s.output)
    assert after < before, (before, after)
    student, _ = load_model(s.output)
    # master weights stay float32: only the forward passes ran in bfloat16
    assert {p.dtype for p in student.parameters()} == {torch.float32}


def test_bf16_loss_close_to_fp32(run_cfg):
    run_cfg.train.method = "logits"
    student, tok = load_model(run_cfg.student_init_path())
    teacher = load_model(run_cfg.teacher.model_path)[0]
    examples, _ = prepare(run_cfg, tok)
    batch = collate(examples[:4], tok.pad_token_id)
    losses = {}
    with torch.no_grad():
        for p in ("fp32", "bf16"):
            run_cfg.train.precision = p
            losses[p] = float(batch_loss(student, teacher, batch, run_cfg)[0])
    assert losses["fp32"] > 0
    assert abs(losses["bf16"] - losses["fp32"]) < 0.05 * losses["fp32"], losses


def test_precision_must_be_known(run_cfg):
    with pytest.raises(ValueError, match="precision"):
        run_cfg.train.model_validate({**run_cfg.train.model_dump(), "precision": "fp8"})


def _hidden_loss(cfg, model_path):
    from distillguard.distill.train import layer_pairs

    student, tok = load_model(model_path)
    teacher = load_model(cfg.teacher.model_path)[0]
    pairs = layer_pairs(cfg, teacher)
    examples, _ = prepare(cfg, tok)
    with torch.no_grad():
        parts = [batch_loss(student, teacher, collate([examples[i] for i in b], tok.pad_token_id), cfg, pairs)[1]
                 for b in make_batches(examples, 4)]
    return pairs, sum(p["hidden"] for p in parts) / len(parts)


@pytest.mark.slow
def test_hidden_alignment_trains_the_stream_into_the_kept_layer(run_cfg):
    """Student = teacher layers [0, 3]: its layer-1 input is pulled towards what teacher layer 3 reads."""
    run_cfg.train.method, run_cfg.train.hidden_weight = "logits", 5.0
    run_cfg.train.learning_rate, run_cfg.train.max_steps = 3e-3, 8
    pairs, before = _hidden_loss(run_cfg, run_cfg.student_init_path())
    assert pairs == [(1, 3)] and before > 0.01
    s = train(run_cfg, progress=False)
    assert _hidden_loss(run_cfg, s.output)[1] < before
    logged = [json.loads(x) for x in (s.output / "train_log.jsonl").read_text().splitlines()]
    assert all("hidden" in r and "kd" in r for r in logged)
    assert json.loads((s.output / "distill_train.json").read_text())["config"]["hidden_weight"] == 5.0


def test_hidden_alignment_needs_logits_and_kept_layers(run_cfg, tmp_path):
    run_cfg.train.method, run_cfg.train.hidden_weight = "sft", 1.0
    with pytest.raises(DataError, match="needs method 'logits'"):
        train(run_cfg, progress=False)
    # a student folder that does not say which teacher layers it kept
    bare = tmp_path / "bare"
    shutil.copytree(run_cfg.student_init_path(), bare)
    (bare / "distill_student.json").unlink()
    run_cfg.train.method, run_cfg.train.student = "logits", bare
    with pytest.raises(DataError, match="records none"):
        train(run_cfg, progress=False)


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_warns_on_a_cpu_that_emulates_it(run_cfg, monkeypatch, fast):
    import warnings

    monkeypatch.setattr(train_mod, "bf16_is_fast", lambda: fast)
    run_cfg.train.method, run_cfg.train.precision, run_cfg.train.max_steps = "sft", "bf16", 1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(run_cfg, progress=False)
    slow = [w for w in seen if "emulates bfloat16" in str(w.message)]
    assert len(slow) == (0 if fast else 1)
    if slow:
        assert "precision = 'fp32'" in str(slow[0].message)


def test_bf16_training_leaves_the_shared_teacher_float32(run_cfg):
    """`distill run` trains and then evaluates in one process: eval must score against the float32 teacher."""
    from distillguard.distill.modelio import load_teacher

    run_cfg.train.method, run_cfg.train.precision, run_cfg.train.max_steps = "logits", "bf16", 1
    train(run_cfg, progress=False)
    teacher, _ = load_teacher(run_cfg.teacher.model_path, threads=1)
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}
