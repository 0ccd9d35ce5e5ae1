"""CLI for distillguard.watermark: detect watermarks, audit suspect models, make keys.

Heavy imports (scipy, llama_cpp, transformers) live inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from distillguard import jsonl
from distillguard.watermark.entropy import DEFAULT_MAX_TOKEN_PROB, DEFAULT_MIN_ENTROPY

app = typer.Typer(no_args_is_help=True)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


def _setup(config: Path | None, key_file: Path | None, key_env: str | None):
    """(WatermarkConfig, KeyRing) from the settings file plus command-line key options."""
    from distillguard.config import ConfigError, load_settings
    from distillguard.watermark.keys import WatermarkKeyError, load_key_ring

    try:
        cfg = load_settings(config).watermark
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if key_file is not None or key_env is not None:
        kf, ke = key_file, key_env
    else:
        kf, ke = cfg.key_file, cfg.key_env
    try:
        ring = load_key_ring(kf, ke)
        params = cfg.scheme_params()
    except (WatermarkKeyError, ValueError) as exc:
        raise _fail(str(exc)) from None
    return cfg, ring, params


KeyFile = Annotated[Optional[Path], typer.Option("--key-file", help="Secret file: one key per line, first is current.")]
KeyEnv = Annotated[Optional[str], typer.Option("--key-env", help="Environment variable holding the key(s).")]
Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="Settings TOML (scheme parameters).")]


@app.command()
def detect(
    file: Annotated[str, typer.Argument(help="Text file, or - for stdin. With --events: an events JSONL.")] = "-",
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    config: Config = None,
    fpr: Annotated[float, typer.Option(help="False-positive rate for the verdict.")] = 1e-5,
    events: Annotated[bool, typer.Option("--events", help="FILE is an events JSONL: test each response and all pooled.")] = False,
    ids: Annotated[bool, typer.Option("--ids", help="FILE holds a JSON list of token ids (served model's tokenizer).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    scoring_model: Annotated[Optional[str], typer.Option(
        help="Entropy-aware detection: score only positions where this model (HF folder, .gguf, or 'served' "
             "for the packaged SmolLM2) had entropy >= --min-entropy. Same tokenizer as the served model.")] = None,
    min_entropy: Annotated[float, typer.Option(help="Entropy gate in nats (with --scoring-model).")] = DEFAULT_MIN_ENTROPY,
    max_token_prob: Annotated[Optional[float], typer.Option(
        help="Also skip positions whose actual token had probability above this (with --scoring-model).")] = DEFAULT_MAX_TOKEN_PROB,
    temperature: Annotated[float, typer.Option(
        help="Sampling temperature the text was served at (with --scoring-model; events use their own).")] = 1.0,
    replay: Annotated[bool, typer.Option(
        "--replay", help="Gumbel scheme: redo the keyed choice with --scoring-model at each position and test the "
                         "matches (exact; far more power when the model, prompt and temperature are the served ones).")] = False,
) -> None:
    """Test a text (or every response of an events export) for the watermark; exact p-values."""
    from distillguard.watermark.detect import DetectionInputError, Detector
    from distillguard.watermark.tokenizer import load_tokenizer

    if not 0 < fpr < 1:
        raise _fail(f"--fpr must be in (0, 1), got {fpr}")
    if scoring_model is None and (min_entropy != DEFAULT_MIN_ENTROPY or temperature != 1.0
                                  or max_token_prob != DEFAULT_MAX_TOKEN_PROB):
        raise _fail("--min-entropy, --max-token-prob and --temperature only apply with --scoring-model")
    if temperature <= 0:
        raise _fail(f"--temperature must be > 0, got {temperature}")
    cfg, ring, params = _setup(config, key_file, key_env)
    if file == "-":
        raw = sys.stdin.read()
    else:
        p = Path(file)
        if not p.is_file():
            raise _fail(f"input file {p} does not exist (use - to read stdin)")
        raw = p.read_text(encoding="utf-8", errors="replace")
    try:
        det = Detector(params, ring, load_tokenizer(cfg.tokenizer_path))
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    gate = _gate(scoring_model, min_entropy, max_token_prob, temperature, det.tokenizer) if scoring_model else None
    if replay:
        if gate is None:
            raise _fail("--replay needs --scoring-model (the model that served the text, or 'served')")
        if params.scheme != "gumbel":
            raise _fail(f"--replay is for the 'gumbel' scheme; the configured watermark is {params.scheme!r}")
        _print(_replay_detect(det, gate.model, raw, ids, events, temperature, fpr), as_json)
        return

    def masks(items: list[tuple[Any, list[int], float | None]]) -> list[Any] | None:
        """Eligibility masks (prompt, answer ids, temperature) when entropy-aware, else None."""
        if gate is None:
            return None
        return [gate.eligible(gate.model.prompt_ids(prompt), answer_ids, temp if temp and temp > 0 else None)
                for prompt, answer_ids, temp in items]

    try:
        if ids:
            token_ids = _parse_ids(raw)
            result = det.detect_ids([token_ids], fpr, masks([(None, token_ids, None)])).to_dict()
        elif not events:
            enc = det.encode(raw)
            result = det.detect_ids([enc], fpr, masks([(None, enc, None)])).to_dict()
        else:
            from distillguard.events import read_events

            evs = [ev for ev in read_events(jsonl.lines(raw)) if ev.response and ev.response.text]
            if not evs:
                raise _fail("no events with a response text in the input")
            encoded = [det.encode(ev.response.text) for ev in evs]
            ms = masks([(ev.messages() or ev.request.get("prompt"), e, ev.request.get("temperature"))
                        for ev, e in zip(evs, encoded)])
            per_text = []
            for i, e in enumerate(encoded):
                try:
                    m = None if ms is None else [ms[i]]
                    per_text.append({"index": i, **det.detect_ids([e], fpr, m).to_dict()})
                except DetectionInputError as exc:
                    per_text.append({"index": i, "error": str(exc)})
            result = {"pooled": det.detect_ids(encoded, fpr, ms).to_dict(), "texts": per_text}
        if gate is not None:
            (result.get("pooled", result))["entropy_gate"] = gate.describe() | (
                {"temperature": "each event's own (else --temperature)"} if events else {})
    except DetectionInputError as exc:
        raise _fail(str(exc)) from None
    _print(result, as_json)


def _parse_ids(raw: str) -> list[int]:
    """The --ids input: a JSON list of integers, or a one-line failure."""
    try:
        token_ids = json.loads(raw)
        assert isinstance(token_ids, list) and all(isinstance(x, int) for x in token_ids)
    except (json.JSONDecodeError, AssertionError):
        raise _fail("--ids expects a JSON list of integers, e.g. [12, 345, 6]") from None
    return token_ids


def _replay_items(det: Any, raw: str, ids: bool, events: bool, temperature: float) -> list[tuple[Any, list[int], float]]:
    """(prompt or None, answer ids, temperature) for each text to replay."""
    if ids:
        token_ids = _parse_ids(raw)
        items: list[tuple[Any, list[int], float]] = [(None, det.check_ids(token_ids), temperature)]
    elif not events:
        items = [(None, det.encode(raw), temperature)]
    else:
        from distillguard.events import read_events

        evs = [ev for ev in read_events(jsonl.lines(raw)) if ev.response and ev.response.text]
        if not evs:
            raise _fail("no events with a response text in the input")
        items = [(ev.messages() or ev.request.get("prompt"), det.encode(ev.response.text),
                  float(ev.request.get("temperature") or temperature)) for ev in evs]
    return items


def _replay_detect(det: Any, model: Any, raw: str, ids: bool, events: bool, temperature: float, fpr: float) -> dict[str, Any]:
    """``watermark detect --replay``: per-text and pooled replay tests, Bonferroni over the keys."""
    from distillguard.watermark.detect import DetectionInputError
    from distillguard.watermark.replay import ReplayError, replay_inputs, replay_verdict

    try:
        items = _replay_items(det, raw, ids, events, temperature)
    except DetectionInputError as exc:
        raise _fail(str(exc)) from None
    h = det.params.context_width
    if all(len(a) <= (0 if prompt else h) for prompt, a, _ in items):  # a prompt keys the first positions
        raise _fail(f"text too short: the watermark's context width is {h}, so at least {h + 1} tokens are needed")
    try:
        indexed = replay_inputs(model, items)
    except ValueError as exc:  # ScoringModelError
        raise _fail(str(exc)) from None
    texts = [x for _, x in indexed]
    try:
        if not events:
            return replay_verdict(det.marks, texts, fpr)
        return {"pooled": replay_verdict(det.marks, texts, fpr),
                "texts": [{"index": i, **replay_verdict(det.marks, [x], fpr)} for i, x in indexed]}
    except ReplayError as exc:
        raise _fail(str(exc)) from None


def _gate(path: str, min_entropy: float, max_token_prob: float | None, temperature: float, tokenizer: Any):
    """The EntropyGate for --scoring-model, or a one-line failure."""
    from distillguard.models import ModelNotInstalled
    from distillguard.watermark.entropy import EntropyGate, ScoringModel, ScoringModelError

    try:
        if path == "served":
            from distillguard.models import smollm2_gguf

            path = str(smollm2_gguf())
        model = ScoringModel.load(path)
        model.check_tokenizer(tokenizer)
        return EntropyGate(model, min_entropy=min_entropy, temperature=temperature, max_token_prob=max_token_prob)
    except (ScoringModelError, ModelNotInstalled, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    main = result.get("pooled", result)
    typer.echo(
        f"{main['verdict']}: p = {main['p_value']:.3g} (fpr {main['fpr']:g}), "
        f"{main['tokens_scored']} of {main['tokens']} tokens scored, score {main['score']:.2f}, "
        f"key {main['key_id']} ({main['keys_tried']} tried), texts {main['texts']}"
    )


@app.command()
def audit(
    suspect: Annotated[str, typer.Option(help="HF model folder, .gguf file, or OpenAI-compatible base URL.")],
    texts: Annotated[Path, typer.Option(help="Watermarked texts: events JSONL export or a text file.")],
    contexts: Annotated[Optional[Path], typer.Option(
        help="Open weights: texts written WITHOUT the key for the suspect to read (events JSONL or text file), "
             "e.g. the same prompts answered with the watermark off.")] = None,
    mode: Annotated[str, typer.Option(help="open-weights | black-box | auto (URL → black-box).")] = "auto",
    scoring_model: Annotated[Optional[str], typer.Option(
        help="Open weights: score only positions where this model (the watermarking model: HF folder, .gguf or "
             "'served') gives its top token at most --max-top-prob.")] = None,
    max_top_prob: Annotated[float, typer.Option(help="Reading gate threshold (with --scoring-model).")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Reading gate: the temperature the texts were served at.")] = 0.7,
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    config: Config = None,
    limit: Annotated[Optional[int], typer.Option(help="Use at most this many texts.")] = None,
    filter_seen: Annotated[bool, typer.Option(help="Open weights: score only windows seen in the served outputs.")] = False,
    reference: Annotated[Optional[Path], typer.Option(help="Unwatermarked reference model read the same way (control).")] = None,
    shift: Annotated[bool, typer.Option(
        "--shift", help="Open weights: the shift audit: the suspect's whole next-token distributions against "
                        "--scoring-model's (the watermarking model) on the contexts; sees the light tilt a "
                        "fine-tune leaves where top-1 predictions rarely flip (Chernoff p-value, valid).")] = False,
    control_keys: Annotated[int, typer.Option(help="Fresh random keys scored as a control.")] = 5,
    model_name: Annotated[Optional[str], typer.Option(help="Black box: model id at the URL.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Black box: env var with the suspect API key.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Black box: tokens per answer.")] = 128,
    fpr: Annotated[float, typer.Option(help="Verdict threshold.")] = 1e-5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Radioactivity: was SUSPECT trained on our watermarked texts? p-value plus a control."""
    import os

    from distillguard.watermark.audit import AuditError, audit_black_box, audit_open_weights, load_examples
    from distillguard.watermark.entropy import ScoringModelError
    from distillguard.watermark.tokenizer import load_tokenizer

    cfg, ring, params = _setup(config, key_file, key_env)
    if mode == "auto":
        mode = "black-box" if suspect.startswith(("http://", "https://")) else "open-weights"
    if mode not in ("open-weights", "black-box"):
        raise _fail(f"--mode must be open-weights, black-box or auto, got {mode!r}")
    try:
        examples = load_examples(texts, limit)
        tokenizer = load_tokenizer(cfg.tokenizer_path)
        if mode == "open-weights":
            if suspect.startswith(("http://", "https://")):
                raise AuditError("open-weights mode needs a local model; a URL can only be audited in black-box mode")
            if contexts is None:
                raise AuditError("open-weights mode needs --contexts: texts written without the watermark key for the "
                                 "suspect to read (reading the watermarked texts biases the test)")
            ctx = load_examples(contexts, limit)
            if shift:
                res = _shift_audit(suspect, scoring_model, examples, ctx, params, ring, tokenizer, control_keys)
                return _print_audit(res, fpr, as_json)
            gate = None
            if scoring_model:
                from distillguard.watermark.entropy import ReadingGate

                gate = ReadingGate(_gate(scoring_model, 0.0, None, 1.0, tokenizer).model, max_top_prob=max_top_prob,
                                   temperature=temperature)
            res = audit_open_weights(suspect, examples, params, ring, tokenizer, filter_seen, control_keys, reference,
                                     contexts=ctx, gate=gate)
        else:
            if shift:
                raise AuditError("--shift reads the suspect's distributions: it needs --mode open-weights and a local model")
            api_key = os.environ.get(api_key_env) if api_key_env else None
            res = audit_black_box(suspect, examples, params, ring, tokenizer, model_name, max_tokens,
                                  control_keys=control_keys, api_key=api_key)
    except (AuditError, ScoringModelError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    _print_audit(res, fpr, as_json)


def _print_audit(res: Any, fpr: float, as_json: bool) -> None:
    out = res.to_dict()
    out["verdict"] = "radioactive" if res.p_value <= fpr else "not_detected"
    if as_json:
        typer.echo(json.dumps(out, indent=2))
    else:
        ctrl = ", ".join(f"{p:.3g}" for p in res.control["random_key_p_values"])
        what = "(window, token) shifts" if res.mode == "open-weights-shift" else "distinct tuples"
        typer.echo(f"{out['verdict']}: p = {res.p_value:.3g} over {res.tuples_scored} {what} "
                   f"from {res.texts} texts ({res.mode}); control (random keys): {ctrl}")


def _shift_audit(suspect: str, scoring_model: str | None, examples: list[Any], ctx: list[Any], params: Any,
                 ring: Any, tokenizer: Any, control_keys: int) -> Any:
    """``watermark audit --shift``: load the suspect and the reference, check both read our tokens."""
    from distillguard.watermark.audit import AuditError, audit_shift, check_contexts, check_tokenizer, load_suspect

    if not scoring_model:
        raise AuditError("--shift needs --scoring-model: the watermarking model (HF folder, .gguf or 'served') "
                         "whose distributions the suspect's are compared with")
    check_contexts(ctx, examples, params, ring, tokenizer)
    reference = _gate(scoring_model, 0.0, None, 1.0, tokenizer).model
    model, tok = load_suspect(suspect)
    check_tokenizer(tok, tokenizer)
    return audit_shift(model, reference.model, tok, ctx, params, ring, suspect, control_keys)


@app.command("new-key")
def new_key() -> None:
    """Print a fresh random key (put it on the first line of the key file to rotate)."""
    from distillguard.watermark.keys import new_secret

    typer.echo(new_secret())
