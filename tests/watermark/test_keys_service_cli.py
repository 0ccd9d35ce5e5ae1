"""Keys, the gateway-facing service, and the CLI (real SmolLM2 tokenizer: vocabulary only, fast)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.watermark.config import WatermarkConfig
from distillguard.watermark.detect import Detector
from distillguard.watermark.keys import KeyRing, WatermarkKeyError, load_key_ring
from distillguard.watermark.processors import WatermarkService, build_processor
from distillguard.watermark.schemes import SchemeParams

SECRET = "unit-test-secret-0123456789abcdef"
WORDS = ("the a of and to in is was he she it they we you that this with for on at by from his her "
         "their our cat dog house tree river city road car book water fire light night day time man "
         "woman child world life hand eye head door window table chair food bread milk wine green red "
         "blue black white big small old new good bad long short high low first last early late").split()


@pytest.fixture(scope="module")
def tokenizer():
    llama_cpp = pytest.importorskip("llama_cpp")  # noqa: F841
    from distillguard.watermark.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def word_ids(tokenizer):
    ids = {}
    for w in WORDS:
        t = tokenizer.encode(" " + w)
        if len(t) == 1:
            ids[t[0]] = " " + w
    assert len(ids) > 60
    return ids


def _watermarked_text(word_ids, params, secret, n, seed, tokenizer):
    """Sample words through the processor from a random 'model' over single-token words."""
    rng = np.random.default_rng(seed)
    allowed = np.array(sorted(word_ids))
    proc = build_processor(WatermarkConfig(**params.describe()), KeyRing.from_secret(secret), tokenizer, 1.0)
    ids = [int(rng.choice(allowed))]
    for _ in range(n):
        logits = np.full(tokenizer.vocab_size, -np.inf, dtype=np.float32)
        logits[allowed] = rng.normal(size=allowed.size) * 1.5
        out = proc(np.array(ids), logits).astype(np.float64)
        p = np.exp(out - out[allowed].max())
        p /= p.sum()
        ids.append(int(rng.choice(tokenizer.vocab_size, p=p)))
    return "".join(word_ids[i] for i in ids).strip()


def test_key_ring_parsing_and_secrecy(tmp_path, monkeypatch):
    f = tmp_path / "wm.key"
    f.write_text(f"# rotated 2026-11\ncurrent:{SECRET}\n{SECRET[::-1]}\n")
    ring = load_key_ring(f, None)
    assert ring.current.key_id == "current" and len(ring) == 2
    assert ring.keys[1].key_id.startswith("wk_")
    assert SECRET not in repr(ring) and SECRET not in repr(ring.current)
    monkeypatch.setenv("WMK", f"{SECRET},{SECRET}x")
    assert len(load_key_ring(None, "WMK")) == 2
    with pytest.raises(WatermarkKeyError, match="shorter than 16"):
        KeyRing.parse("short", "test")
    with pytest.raises(WatermarkKeyError, match="does not exist"):
        load_key_ring(tmp_path / "missing", None)
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(WatermarkKeyError, match="NOPE_KEY.*not set"):
        load_key_ring(None, "NOPE_KEY")


def test_service_enables_per_tier_and_account(tokenizer):
    cfg = WatermarkConfig(enabled=True, tiers=["trial"], accounts=["suspect-co"], exempt_accounts=["eval"])
    svc = WatermarkService(cfg, KeyRing.from_secret(SECRET), tokenizer)
    assert len(svc.processors_for("acme", "trial")) == 1
    assert svc.processors_for("acme", "verified") == []
    assert len(svc.processors_for("suspect-co", "verified")) == 1
    assert svc.processors_for("eval", "trial") == []
    off = WatermarkService(WatermarkConfig(enabled=False), None, tokenizer)
    assert off.processors_for("acme", "trial") == []


def test_settings_load_with_key_env_set(monkeypatch):
    from distillguard.config import load_settings

    monkeypatch.setenv("DISTILLGUARD_WATERMARK_KEY", SECRET)
    monkeypatch.setenv("DISTILLGUARD_WATERMARK__GAMMA", "0.5")
    s = load_settings()
    assert s.watermark.gamma == 0.5
    svc = WatermarkService.from_settings(s.model_copy(update={"watermark": s.watermark.model_copy(update={"enabled": True})}))
    assert svc.keys is not None and svc.keys.current.secret == SECRET.encode()


def test_detect_text_end_to_end_with_real_tokenizer(tokenizer, word_ids):
    params = SchemeParams(gamma=0.25, delta=3.0)
    text = _watermarked_text(word_ids, params, SECRET, 120, 0, tokenizer)
    svc = WatermarkService(WatermarkConfig(enabled=True, scheme="kgw", delta=3.0), KeyRing.from_secret(SECRET), tokenizer)
    res = svc.detect_text(text)
    assert res["verdict"] == "watermarked" and res["p_value"] < 1e-5
    assert SECRET not in json.dumps(res)
    plain = _watermarked_text(word_ids, SchemeParams(delta=0.0), SECRET, 120, 1, tokenizer)
    assert svc.detect_text(plain)["p_value"] > 1e-3
    wrong = WatermarkService(WatermarkConfig(enabled=True, scheme="kgw", delta=3.0), KeyRing.from_secret(SECRET + "x"), tokenizer)
    assert wrong.detect_text(text)["p_value"] > 1e-3  # not an error, just not significant
    assert "too short" in svc.detect_text("")["error"]


def test_other_tokenizer_ids_are_refused(tokenizer):
    det = Detector(SchemeParams(), KeyRing.from_secret(SECRET), tokenizer)
    with pytest.raises(ValueError, match="another tokenizer"):
        det.detect_ids([[1, 2, 3, 10**6]])


def test_cli_detect(tmp_path, tokenizer, word_ids, monkeypatch):
    runner = CliRunner()
    params = SchemeParams(gamma=0.25, delta=3.0)
    f = tmp_path / "t.txt"
    f.write_text(_watermarked_text(word_ids, params, SECRET, 120, 2, tokenizer))
    keyf = tmp_path / "k"
    keyf.write_text(SECRET + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[watermark]\nscheme = \"kgw\"\ndelta = 3.0\n")
    r = runner.invoke(app, ["watermark", "detect", str(f), "--key-file", str(keyf), "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["verdict"] == "watermarked" and out["tokens_scored"] > 50
    # stdin, plain output
    monkeypatch.setenv("WM_TEST_KEY", SECRET)
    r = runner.invoke(app, ["watermark", "detect", "-", "--key-env", "WM_TEST_KEY", "-c", str(cfg)], input=f.read_text())
    assert r.exit_code == 0 and r.stdout.startswith("watermarked")
    # bad inputs: one line on stderr, non-zero exit, no traceback
    r = runner.invoke(app, ["watermark", "detect", str(tmp_path / "nope.txt"), "--key-file", str(keyf)])
    assert r.exit_code != 0 and "does not exist" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["watermark", "detect", "-", "--key-file", str(keyf)], input="hi")
    assert r.exit_code != 0 and "too short" in r.stderr
    r = runner.invoke(app, ["watermark", "detect", str(f), "--key-env", "NOT_SET_ANYWHERE"])
    assert r.exit_code != 0 and "not set" in r.stderr
    r = runner.invoke(app, ["watermark", "detect", "-", "--ids", "--key-file", str(keyf)], input="[1, 2, 99999999]")
    assert r.exit_code != 0 and "another tokenizer" in r.stderr
    r = runner.invoke(app, ["watermark", "detect", "-", "--ids", "--key-file", str(keyf)], input="hello")
    assert r.exit_code != 0 and "JSON list" in r.stderr


def test_cli_detect_events_pooled(tmp_path, tokenizer, word_ids):
    params = SchemeParams(gamma=0.25, delta=3.0)
    ev = tmp_path / "events.jsonl"
    lines = []
    for i in range(4):
        text = _watermarked_text(word_ids, params, SECRET, 30, 10 + i, tokenizer)
        lines.append(json.dumps({"ts": 1.0 + i, "account": "a", "request": {"messages": [{"role": "user", "content": "q"}]},
                                 "response": {"text": text}}))
    ev.write_text("\n".join(lines) + "\n")
    keyf = tmp_path / "k"
    keyf.write_text(SECRET)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[watermark]\nscheme = \"kgw\"\ndelta = 3.0\n")
    r = CliRunner().invoke(app, ["watermark", "detect", str(ev), "--events", "--key-file", str(keyf), "-c", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["texts"]) == 4 and out["pooled"]["texts"] == 4
    assert out["pooled"]["p_value"] < min(t["p_value"] for t in out["texts"])


def test_cli_audit_bad_inputs(tmp_path):
    keyf = tmp_path / "k"
    keyf.write_text(SECRET)
    texts = tmp_path / "t.txt"
    texts.write_text("some served text\n")
    runner = CliRunner()
    r = runner.invoke(app, ["watermark", "audit", "--suspect", str(tmp_path / "no-model"), "--texts", str(texts),
                            "--key-file", str(keyf)])
    assert r.exit_code != 0 and "needs --contexts" in r.stderr
    ctx = tmp_path / "c.txt"
    ctx.write_text("an unwatermarked text\n\nanother one\n")
    r = runner.invoke(app, ["watermark", "audit", "--suspect", str(tmp_path / "no-model"), "--texts", str(texts),
                            "--contexts", str(ctx), "--key-file", str(keyf)])
    assert r.exit_code != 0 and "suspect model" in r.stderr and "does not exist" in r.stderr
    r = runner.invoke(app, ["watermark", "audit", "--suspect", str(tmp_path / "no-model"), "--texts", str(texts),
                            "--contexts", str(texts), "--key-file", str(keyf)])
    assert r.exit_code != 0 and "are served (watermarked) texts" in r.stderr
    r = runner.invoke(app, ["watermark", "audit", "--suspect", str(tmp_path), "--texts", str(tmp_path / "none.jsonl"),
                            "--key-file", str(keyf)])
    assert r.exit_code != 0 and "texts file" in r.stderr
    r = runner.invoke(app, ["watermark", "audit", "--suspect", "http://127.0.0.1:9/v1", "--texts", str(texts),
                            "--key-file", str(keyf)])
    assert r.exit_code != 0 and "needs prompts" in r.stderr
