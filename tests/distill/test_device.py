"""Where the pipeline runs: "auto" picks a CUDA GPU when torch sees one; an absent device is a clear error."""

import json

import pytest
import torch
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.distill.config import EvalConfig, TeacherConfig, TrainConfig
from distillguard.distill.data import collate, to_device
from distillguard.distill.modelio import DeviceUnavailable, load_model, resolve_device
from distillguard.distill.train import prepare, train

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_absent_gpu_is_an_error_that_says_what_to_set(name):
    with pytest.raises(DeviceUnavailable, match="set device = 'cpu' or 'auto'"):
        resolve_device(name)


@pytest.mark.parametrize("section", [TrainConfig, EvalConfig, TeacherConfig])
def test_config_rejects_unknown_devices(section):
    assert section().device == "auto"
    for bad in ("gpu", "cuda:", "tpu", "CPU"):
        with pytest.raises(ValueError, match="device"):
            section.model_validate({"device": bad})
    assert section.model_validate({"device": "cuda:0"}).device == "cuda:0"


def test_batches_move_with_their_tensors(run_cfg):
    model, tok = load_model(run_cfg.student_init_path())
    examples, _ = prepare(run_cfg, tok)
    batch = collate(examples[:2], tok.pad_token_id)
    moved = to_device(batch, torch.device("meta"))
    assert set(moved) == set(batch) and all(v.device.type == "meta" for v in moved.values())
    assert all(v.device.type == "cpu" for v in batch.values())  # the original is untouched


def test_training_records_its_device(run_cfg):
    run_cfg.train.method, run_cfg.train.device, run_cfg.train.max_steps = "sft", "cpu", 1
    s = train(run_cfg, progress=False)
    assert s.device == "cpu"
    assert json.loads((s.output / "distill_train.json").read_text())["device"] == "cpu"


@no_cuda
def test_cli_refuses_an_absent_gpu_in_one_line(run_cfg):
    r = CliRunner().invoke(app, ["distill", "train", "--workdir", str(run_cfg.workdir), "--method", "sft", "--device", "cuda"])
    text = r.output + (r.stderr if r.stderr_bytes is not None else "")
    assert r.exit_code == 2 and "device 'cuda' asked for" in text and "Traceback" not in text
    r = CliRunner().invoke(app, ["distill", "eval", "--workdir", str(run_cfg.workdir), "--device", "gpu"])
    text = r.output + (r.stderr if r.stderr_bytes is not None else "")
    assert r.exit_code == 2 and "distill.eval.device" in text
