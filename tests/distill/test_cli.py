"""The CLI: bad input gets one line on stderr and a non-zero exit; the happy path runs end to end."""

import json

import pytest
from typer.testing import CliRunner

from distillguard.cli import app

runner = CliRunner()


def _run(*args):
    r = runner.invoke(app, ["distill", *map(str, args)])
    text = r.output + (r.stderr if r.stderr_bytes is not None else "")
    return r, text


def test_empty_prompt_file(tmp_path, tiny_teacher):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    r, text = _run("collect", "--workdir", tmp_path, "--prompts", f, "--teacher-path", tiny_teacher)
    assert r.exit_code == 2 and "has no rows" in text and "Traceback" not in text


def test_malformed_prompt_file(tmp_path, tiny_teacher):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    r, text = _run("collect", "--workdir", tmp_path, "--prompts", f, "--teacher-path", tiny_teacher)
    assert r.exit_code == 2 and "bad.jsonl:2" in text


def test_teacher_url_down(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[distill]\nworkdir = "{tmp_path}"\n[distill.collect]\nmax_retries = 1\nbackoff_initial_s = 0.001\n')
    r, text = _run("collect", "--config", cfg, "--prompts", f, "--teacher-url", "http://127.0.0.1:9/v1")
    assert r.exit_code == 2 and "failed after 2 attempts" in text and "rerun" in text


def test_bad_config_value(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[distill.train]\nmethod = "bogus"\n')
    r, text = _run("train", "--config", cfg)
    assert r.exit_code == 2 and "distill.train.method" in text


def test_missing_student_and_model(tmp_path):
    r, text = _run("train", "--workdir", tmp_path, "--method", "sft")
    assert r.exit_code == 2 and "distill student" in text
    r, text = _run("export", "--workdir", tmp_path)
    assert r.exit_code == 2 and "no model to export" in text
    r, text = _run("student", "--workdir", tmp_path, "--layers", "0,x")
    assert r.exit_code == 2 and "--layers" in text


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, tiny_teacher, prompt_file):
    cfg = tmp_path / "distill.toml"
    cfg.write_text(f"""
[distill]
workdir = "{tmp_path / 'run'}"
heldout_fraction = 0.3
[distill.teacher]
model_path = "{tiny_teacher}"
n_threads = 1
[[distill.collect.sources]]
path = "{prompt_file}"
field = "prompt"
limit = 8
[distill.collect]
max_tokens = 6
[distill.student]
layers = [0, 2]
[distill.train]
max_steps = 2
batch_size = 4
threads = 1
[distill.eval]
generate_prompts = 1
max_new_tokens = 4
""")
    for step in (["collect"], ["student"], ["train"], ["train", "--method", "sft"], ["eval"], ["export", "--dtype", "f32"]):
        r, text = _run(*step, "--config", cfg)
        assert r.exit_code == 0, (step, text)
    res = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert [m["name"] for m in res["models"]] == ["teacher", "student-init", "logits-forward_kl", "sft"]
    assert list((tmp_path / "run" / "export").glob("*.gguf"))
    # collect again: nothing new is asked
    r, text = _run("collect", "--config", cfg)
    assert r.exit_code == 0 and "0 new answers" in text and "8 already there" in text


@pytest.mark.slow
def test_run_quick(tmp_path, tiny_teacher):
    """`run --quick`: built-in prompts, batched teacher, a short logit-KD run, one eval table."""
    cfg = tmp_path / "distill.toml"
    cfg.write_text(f"""
[distill]
workdir = "{tmp_path / 'quick'}"
[distill.teacher]
model_path = "{tiny_teacher}"
""")
    r, text = _run("run", "--quick", "--config", cfg)
    assert r.exit_code == 0, text
    recs = [json.loads(x) for x in (tmp_path / "quick" / "teacher.jsonl").read_text().splitlines()]
    assert len(recs) == 32 and all(x["completion_tokens"] <= 40 for x in recs)
    res = json.loads((tmp_path / "quick" / "eval.json").read_text())
    assert [m["name"] for m in res["models"]] == ["teacher", "student-init", "logits-forward_kl"]
    assert res["heldout_prompts_scored"] >= 1
    train = json.loads((tmp_path / "quick" / "students" / "logits-forward_kl" / "distill_train.json").read_text())
    assert train["steps"] == 12 and train["config"]["method"] == "logits"


def test_free_cores_leaves_busy_cores_alone(monkeypatch):
    from distillguard.distill import cli

    monkeypatch.setattr(cli.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert cli.free_cores() == 3
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (8.0, 0.0, 0.0))
    assert cli.free_cores() == 1  # busier than the machine: still one thread
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cli.free_cores() == 4
