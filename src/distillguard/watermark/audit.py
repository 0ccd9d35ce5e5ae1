"""Radioactivity audits: was a suspect model trained on our watermarked outputs?

Sander et al. 2024 (arXiv 2402.14904): a student fine-tuned on watermarked text inherits a bias
towards the tokens that were green (or had a high Gumbel draw) after each window.

* **Open weights (reading mode).** Feed *contexts written without the key* (prompt + answer,
  chat template as served; e.g. the same prompts answered with the watermark off) through the
  suspect; at every answer position take its top-1 next-token prediction and score the tuple
  (window of the context, predicted token). A model that never saw watermarked text predicts
  high-draw tokens at the null rate; one trained on watermarked text, above it. With
  ``filter_seen`` only windows that occur in the served watermarked texts are scored (the windows
  the suspect could have learned something about).
* **Black box.** Query the suspect with the prompts and score its answers like any text.

Why the contexts must be unwatermarked: every window of a watermarked text was followed by a
keyed race over the vocabulary, so the draws u(window, token) are not uniform given that text: the
token that won is biased high and every other token low. Read by the model that wrote them (never
trained on any watermark; bench/watermark_reading_bias.py, 300 answers, this module's filters),
the tuples whose prediction is the actual token average 1.20 against 1.00 under H0 (p = 7e-46 over
5,693), the 3,204 others 0.63; in total p = 0.71, but only because the two balance at that reader's
64% agreement with the text. A suspect that predicts the text more often, e.g. a student that
memorised it, scores high without having learned anything about the key (the audits of sessions
3-4 read that way and gave p = 8e-14 for a student at N = 496; the same recipe in session 5
reads p = 0.01 on unwatermarked contexts). Reading unwatermarked contexts removes the dependence: the prediction is a function of
the context and the suspect, neither of which saw the key, so the p-value is exact under H0 (no
training on watermarked text). The audit refuses contexts that carry the watermark (a pooled
detection test on them) or repeat the served texts.

Tuples are deduplicated across all texts. A tuple the suspect could have *copied from its input*
is skipped: its window occurs in the example's own prompt, or the same (window, token) already
appeared earlier in the text; copying from the context is not evidence of training. As a control
the very same tuples are scored under fresh random keys (what an unrelated key says), and
optionally a reference model is read the same way under our key.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.watermark.detect import p_value
from distillguard.watermark.keys import KeyRing
from distillguard.watermark.schemes import SchemeParams, Watermark


class AuditError(ValueError):
    """The audit cannot run (missing suspect, unreadable texts); the message says what to fix."""


@dataclass
class Example:
    prompt: list[dict[str, Any]] | str  # chat messages, or raw prompt text ("" when unknown)
    answer: str


@dataclass
class ScoredSet:
    tuples: int
    score: float
    p_value: float


@dataclass
class AuditResult:
    mode: str  # "open-weights" | "black-box"
    suspect: str
    texts: int
    tuples_scored: int
    score: float
    p_value: float  # Bonferroni-corrected over the keys in the ring
    key_id: str | None
    control: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- reading the watermarked texts --------------------------------------------------------
def load_examples(path: Path | str, limit: int | None = None) -> list[Example]:
    """Events JSONL (prompt from the request, answer from response.text) or a plain text file
    (texts separated by blank lines, no prompts)."""
    p = Path(path)
    if not p.is_file():
        raise AuditError(f"texts file {p} does not exist: give an events JSONL export or a text file")
    out: list[Example] = []
    first = p.read_text(encoding="utf-8", errors="replace").lstrip()[:1]
    if first == "{":
        from distillguard.events import read_events

        for ev in read_events(p):
            text = ev.response.text if ev.response else ""
            if not text:
                continue
            prompt: list[dict[str, Any]] | str = ev.messages() or ev.request.get("prompt") or ""
            out.append(Example(prompt=prompt, answer=text))
    else:
        for block in p.read_text(encoding="utf-8").split("\n\n"):
            if block.strip():
                out.append(Example(prompt="", answer=block.strip()))
    if not out:
        raise AuditError(f"no texts found in {p}: events need response.text; text files need non-empty blocks")
    return out[:limit] if limit else out


def _prompt_text(prompt: list[dict[str, Any]] | str) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))


# -- scoring tuples -----------------------------------------------------------------------
@dataclass
class TupleSet:
    """Distinct (window..., token) tuples to score, gathered once and scored under any key."""

    h: int
    tuples: list[tuple[int, ...]] = field(default_factory=list)
    _seen: set[tuple[int, ...]] = field(default_factory=set)

    def add(self, tup: tuple[int, ...]) -> None:
        if tup not in self._seen:
            self._seen.add(tup)
            self.tuples.append(tup)

    def score(self, params: SchemeParams, secret: bytes) -> ScoredSet:
        wm = Watermark(params, secret, cache_size=1)
        draws: dict[tuple, float] = {}  # self-seeding: distinct tuples can share one draw
        for t in self.tuples:
            key = wm.dedup_key(t[:-1], t[-1])
            if key not in draws:
                draws[key] = wm.token_score(t[:-1], t[-1])
        s = float(sum(draws.values()))
        return ScoredSet(len(draws), s, p_value(params, len(draws), s))


def _ngrams(ids: Sequence[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}


def reading_tuples(
    answer_ids: Sequence[int],
    predictions: Sequence[int],
    prompt_ids: Sequence[int],
    h: int,
    into: TupleSet,
    allowed_windows: set[tuple[int, ...]] | None = None,
    eligible: Sequence[bool] | None = None,
) -> None:
    """Tuples (window of the answer, suspect's top-1 prediction) for one text.

    ``predictions[i]`` is the suspect's prediction for answer position i given everything before;
    ``eligible`` (``entropy.ReadingGate``) limits the positions scored.
    """
    prompt_windows = _ngrams(prompt_ids, h)
    actual: set[tuple[int, ...]] = set()
    for i in range(h, len(answer_ids)):
        window = tuple(int(x) for x in answer_ids[i - h : i])
        tup = window + (int(predictions[i]),)
        copyable = window in prompt_windows or tup in actual
        actual.add(window + (int(answer_ids[i]),))
        if copyable or (allowed_windows is not None and window not in allowed_windows):
            continue
        if eligible is not None and not eligible[i]:
            continue
        into.add(tup)


def text_tuples(ids: Sequence[int], prompt_ids: Sequence[int], h: int, into: TupleSet) -> None:
    """Tuples of a generated text (black-box mode), minus those copyable from the prompt."""
    prompt_grams = _ngrams(prompt_ids, h + 1)
    for i in range(h, len(ids)):
        tup = tuple(int(x) for x in ids[i - h : i + 1])
        if tup not in prompt_grams:
            into.add(tup)


def _conclude(
    mode: str, suspect: str, texts: int, tset: TupleSet | ShiftSet, params: SchemeParams, keys: KeyRing,
    control_keys: int, started: float, reference: ScoredSet | None = None, what: str = "tuples",
) -> AuditResult:
    """Score ``tset`` under every key of the ring (Bonferroni) and under fresh random keys (control)."""
    best: tuple[ScoredSet, str] | None = None
    for k in keys.keys:
        s = tset.score(params, k.secret)
        if best is None or s.p_value < best[0].p_value:
            best = (s, k.key_id)
    assert best is not None
    controls = [tset.score(params, secrets.token_bytes(32)).p_value for _ in range(control_keys)]
    control: dict[str, Any] = {
        "description": f"the same {best[0].tuples} {what} scored under {control_keys} fresh random key(s)",
        "random_key_p_values": controls,
    }
    if reference is not None:
        control["reference_model"] = asdict(reference)
    return AuditResult(
        mode=mode, suspect=suspect, texts=texts, tuples_scored=best[0].tuples, score=best[0].score,
        p_value=min(1.0, best[0].p_value * len(keys)), key_id=best[1] if best[0].tuples else None,
        control=control, seconds=time.time() - started,
    )


# -- open weights ---------------------------------------------------------------------------
def load_suspect(path: Path | str) -> tuple[Any, Any]:
    """(model, tokenizer) from an HF folder or a GGUF file, via transformers, float32."""
    p = Path(path)
    if not p.exists():
        raise AuditError(f"suspect model {p} does not exist: give an HF model folder, a .gguf file, or an http(s) URL")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    folder = p
    if p.is_file():
        if p.suffix != ".gguf":
            raise AuditError(f"{p} is a file but not a .gguf: give a .gguf file or an HF model folder")
        folder, kwargs["gguf_file"] = p.parent, p.name
    elif not (p / "config.json").is_file():
        raise AuditError(f"{p} has no config.json: it is not a transformers model folder")
    tok = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs).eval()
    return model, tok


def _encode_example(tok: Any, ex: Example) -> tuple[list[int], list[int]]:
    """(prompt ids incl. the chat template's assistant header, answer ids)."""
    if isinstance(ex.prompt, list) and ex.prompt and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(ex.prompt, add_generation_prompt=True, tokenize=False)
        prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tok(_prompt_text(ex.prompt), add_special_tokens=False)["input_ids"] if ex.prompt else []
    answer_ids = tok(ex.answer, add_special_tokens=False)["input_ids"]
    return list(prompt_ids), list(answer_ids)


def read_predictions(model: Any, prompt_ids: list[int], answer_ids: list[int], max_len: int = 1024) -> list[int]:
    """Suspect's top-1 prediction for each answer position (index i predicts answer_ids[i])."""
    import torch

    ids = (prompt_ids + answer_ids)[:max_len]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
    top1 = logits.argmax(-1).tolist()
    start = len(prompt_ids)
    # position start+i is predicted by logits at start+i-1; answer position 0 needs prompt context
    preds = [top1[start + i - 1] if start + i - 1 >= 0 else -1 for i in range(len(ids) - start)]
    return preds


def check_tokenizer(tok: Any, reference_tokenizer: Any | None) -> None:
    if reference_tokenizer is None:
        return
    probe = "Watermark audit probe: the quick brown fox, 1234 — naïve café."
    if list(tok(probe, add_special_tokens=False)["input_ids"]) != list(reference_tokenizer.encode(probe)):
        raise AuditError(
            "the suspect's tokenizer differs from the watermarking model's: reading mode needs the same "
            "token ids; audit it in black-box mode (--mode black-box) instead"
        )


def audit_open_weights(
    suspect: Path | str,
    examples: list[Example],
    params: SchemeParams,
    keys: KeyRing,
    reference_tokenizer: Any | None = None,
    filter_seen: bool = False,
    control_keys: int = 5,
    reference_model: Path | str | None = None,
    progress: bool = True,
    contexts: list[Example] | None = None,
    gate: Any | None = None,
) -> AuditResult:
    """Reading audit: ``examples`` are the served watermarked texts, ``contexts`` texts written
    without the key that the suspect reads (see the module docstring); ``gate`` an
    ``entropy.ReadingGate`` (score only positions where the watermarking model had no dominant token)."""
    started = time.time()
    check_contexts(contexts, examples, params, keys, reference_tokenizer)
    model, tok = load_suspect(suspect)
    return audit_loaded_model(model, tok, examples, params, keys, str(suspect), reference_tokenizer, filter_seen,
                              control_keys, reference_model, progress, started, contexts, gate)


def check_contexts(contexts: list[Example] | None, examples: list[Example], params: SchemeParams, keys: KeyRing,
                   tokenizer: Any | None, max_p: float = 1e-3) -> None:
    """Refuse contexts that are missing, repeat the served texts, or carry our watermark."""
    if not contexts:
        raise AuditError(
            "open-weights reading needs contexts written without the watermark key (e.g. the same prompts "
            "answered with the watermark off, or any unwatermarked text of the same kind): reading the "
            "watermarked texts themselves makes any model that predicts them well look radioactive"
        )
    served = {ex.answer.strip() for ex in examples}
    repeated = sum(ex.answer.strip() in served for ex in contexts)
    if repeated:
        raise AuditError(f"{repeated} of the {len(contexts)} contexts are served (watermarked) texts: "
                         "contexts must be written without the watermark key")
    if tokenizer is not None:
        from distillguard.watermark.detect import Detector

        ids = [tokenizer.encode(ex.answer) for ex in contexts]
        ids = [x for x in ids if len(x) > params.context_width]
        if ids:
            res = Detector(params, keys).detect_ids(ids)
            if res.p_value < max_p:
                raise AuditError(f"the contexts carry the watermark (pooled p = {res.p_value:.2g} over "
                                 f"{res.tokens_scored} tuples): read texts written without the key")


def audit_loaded_model(
    model: Any,
    tok: Any,
    examples: list[Example],
    params: SchemeParams,
    keys: KeyRing,
    suspect: str = "in-memory model",
    reference_tokenizer: Any | None = None,
    filter_seen: bool = False,
    control_keys: int = 5,
    reference_model: Path | str | None = None,
    progress: bool = True,
    started: float | None = None,
    contexts: list[Example] | None = None,
    gate: Any | None = None,
) -> AuditResult:
    """Reading mode on an already loaded transformers model and tokenizer: it reads ``contexts``
    (unwatermarked; checked by ``audit_open_weights``, not here); ``examples`` (the served texts)
    give the windows ``filter_seen`` keeps."""
    started = time.time() if started is None else started
    if not contexts:
        raise AuditError("open-weights reading needs contexts written without the watermark key")
    check_tokenizer(tok, reference_tokenizer)
    encoded = [_encode_example(tok, ex) for ex in contexts]
    allowed = None
    if filter_seen:
        allowed = set().union(*(_ngrams(_encode_example(tok, ex)[1], params.context_width) for ex in examples))
    masks = None
    if gate is not None:
        masks = [gate.eligible(p, a) for p, a in encoded]
    tset = _read_all(model, encoded, params.context_width, allowed, progress, "reading suspect", masks)
    reference = None
    if reference_model is not None:
        ref_model, ref_tok = load_suspect(reference_model)
        check_tokenizer(ref_tok, reference_tokenizer)
        rset = _read_all(ref_model, encoded, params.context_width, allowed, progress, "reading reference", masks)
        best = min((rset.score(params, k.secret) for k in keys.keys), key=lambda s: s.p_value)
        reference = ScoredSet(best.tuples, best.score, min(1.0, best.p_value * len(keys)))
    res = _conclude("open-weights", suspect, len(contexts), tset, params, keys, control_keys, started, reference)
    if gate is not None:
        res.control["reading_gate"] = gate.describe()
    return res


def _read_all(model: Any, encoded: list[tuple[list[int], list[int]]], h: int,
              allowed: set[tuple[int, ...]] | None, progress: bool, label: str,
              masks: list[Any] | None = None) -> TupleSet:
    from rich.progress import track

    tset = TupleSet(h)
    it = track(list(enumerate(encoded)), description=label, transient=True) if progress else enumerate(encoded)
    for j, (prompt_ids, answer_ids) in it:
        if len(answer_ids) <= h:
            continue
        preds = read_predictions(model, prompt_ids, answer_ids)
        n = len(preds)
        reading_tuples(answer_ids[:n], preds, prompt_ids, h, tset, allowed, None if masks is None else masks[j][:n])
    return tset


# -- black box -----------------------------------------------------------------------------
def audit_black_box(
    suspect: str,
    examples: list[Example],
    params: SchemeParams,
    keys: KeyRing,
    tokenizer: Any,
    model_name: str | None = None,
    max_tokens: int = 128,
    temperature: float = 0.7,
    control_keys: int = 5,
    api_key: str | None = None,
    progress: bool = True,
) -> AuditResult:
    """Query ``suspect`` (OpenAI-compatible base URL, or a local model path) with each prompt."""
    from rich.progress import track

    started = time.time()
    prompted = [ex for ex in examples if ex.prompt]
    if not prompted:
        raise AuditError("black-box mode needs prompts: give an events export (requests carry the prompts)")
    if suspect.startswith(("http://", "https://")):
        answer = _remote_answerer(suspect, model_name, max_tokens, temperature, api_key)
    else:
        answer = _local_answerer(suspect, max_tokens, temperature)
    it = track(prompted, description="querying suspect", transient=True) if progress else prompted
    answers = []
    for ex in it:
        msgs = ex.prompt if isinstance(ex.prompt, list) else [{"role": "user", "content": ex.prompt}]
        answers.append(answer(msgs))
    return audit_answers(suspect, prompted, answers, params, keys, tokenizer, control_keys, started)


def audit_answers(
    suspect: str,
    examples: list[Example],
    answers: list[str],
    params: SchemeParams,
    keys: KeyRing,
    tokenizer: Any,
    control_keys: int = 5,
    started: float | None = None,
) -> AuditResult:
    """Black-box scoring of answers the suspect gave to ``examples``' prompts (however obtained).

    Tuples are deduplicated over all answers, and those that occur in the prompt (copyable) are
    skipped.
    """
    started = time.time() if started is None else started
    if len(answers) != len(examples):
        raise AuditError(f"{len(answers)} answers for {len(examples)} prompts: give one answer per prompt")
    tset = TupleSet(params.context_width)
    for ex, text in zip(examples, answers):
        text_tuples(tokenizer.encode(text), tokenizer.encode(_prompt_text(ex.prompt)), params.context_width, tset)
    return _conclude("black-box", suspect, len(examples), tset, params, keys, control_keys, started)


def _remote_answerer(url: str, model_name: str | None, max_tokens: int, temperature: float, api_key: str | None):
    import openai

    client = openai.OpenAI(base_url=url, api_key=api_key or "none", max_retries=2)
    name = model_name
    if name is None:
        try:
            name = client.models.list().data[0].id
        except Exception as exc:  # noqa: BLE001 - any failure here means: tell us the model
            raise AuditError(f"could not list models at {url} ({exc}); pass --model-name") from exc

    def answer(msgs: list[dict[str, Any]]) -> str:
        try:
            r = client.chat.completions.create(model=name, messages=msgs, max_tokens=max_tokens,
                                               temperature=temperature)
        except openai.APIError as exc:
            raise AuditError(f"the suspect at {url} answered with an error: {exc}") from exc
        return "".join(c.message.content or "" for c in r.choices)

    return answer


def _local_answerer(path: str, max_tokens: int, temperature: float):
    from distillguard.engines.base import SamplingParams
    from distillguard.engines.hf import HFEngine

    if not Path(path).exists():
        raise AuditError(f"suspect model {path} does not exist: give an HF model folder, a .gguf file, or a URL")
    engine = HFEngine(path)
    counter = iter(range(1 << 30))

    def answer(msgs: list[dict[str, Any]]) -> str:
        r = engine.generate_sync(msgs, SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                                      seed=next(counter)))
        return r.choices[0].text

    return answer


def uniformity(p_values: Sequence[float]) -> float:
    """KS-test p-value of the null hypothesis that ``p_values`` are Uniform(0, 1)."""
    from scipy import stats

    return float(stats.kstest(np.asarray(p_values), "uniform").pvalue)


# -- open weights, whole distributions: the shift audit ----------------------------------------
#
# Reading mode above looks at one token per position (the suspect's top-1). A student trained on
# watermarked text has its whole next-token distribution tilted towards the tokens with high keyed
# draws after each window, and a top-1 prediction moves only where that tilt flips the argmax. The
# shift audit uses the tilt itself. For every answer position of the contexts it takes the
# suspect's probabilities p_S and a reference model's p_R (the watermarking model: it never learned
# from its own keyed choices) and sums, per (window, token), the shift D = p_S - p_R over all
# positions with that window (over the top-k tokens of either model). The statistic is
#     S = sum over (window, token) of D * g(u(window, token)),  g(u) = -log(1 - u) - 1 (Gumbel)
#                                                                 g(u) = 1[u < gamma] - gamma (KGW)
# Under H0 (the suspect never saw our key) D is a function of the contexts and the two models
# only, and distinct (window, token) draws are independent with mean-zero g, so S is a weighted sum
# of independent centred variables with known weights. Its p-value is the Chernoff bound
# min over theta of E[exp(theta S)] exp(-theta s): a valid, conservative p-value (never below the
# exact tail), computed in closed form per term. Aggregating positions by (window, token) before
# weighting is what keeps shared draws from being counted as independent evidence.


@dataclass
class ShiftSet:
    """Summed probability shift (suspect - reference) per (window..., token), gathered once."""

    h: int
    weights: dict[tuple[int, ...], float] = field(default_factory=dict)
    positions: int = 0

    def add(self, window: tuple[int, ...], tokens: np.ndarray, shift: np.ndarray) -> None:
        w = self.weights
        for t, d in zip(tokens.tolist(), shift.tolist()):
            key = (*window, t)
            w[key] = w.get(key, 0.0) + d
        self.positions += 1

    def score(self, params: SchemeParams, secret: bytes) -> ScoredSet:
        """Statistic and Chernoff p-value under one key (first-occurrence draws: the window itself)."""
        wm = Watermark(params, secret, cache_size=1)
        by_window: dict[tuple[int, ...], list[tuple[int, float]]] = {}
        for key, d in self.weights.items():
            by_window.setdefault(key[:-1], []).append((key[-1], d))
        ds, gs = [], []
        for window, items in by_window.items():
            toks = np.array([t for t, _ in items], dtype=np.int64)
            u = wm.uniform_row(window, int(toks.max()) + 1)[toks]
            ds.append(np.array([d for _, d in items]))
            gs.append(_centred(params, u))
        d = np.concatenate(ds) if ds else np.zeros(0)
        g = np.concatenate(gs) if gs else np.zeros(0)
        s = float(d @ g)
        return ScoredSet(len(d), s, chernoff_p_value(params, d, s))


def _centred(params: SchemeParams, u: np.ndarray) -> np.ndarray:
    if params.scheme == "kgw":
        return (u < params.gamma).astype(np.float64) - params.gamma
    return -np.log1p(-u) - 1.0


def chernoff_p_value(params: SchemeParams, d: np.ndarray, s: float) -> float:
    """Upper bound on P(sum d_i g_i >= s) under H0 (g_i independent: centred Exp(1) or Bernoulli(gamma))."""
    from scipy.optimize import minimize_scalar

    d = d[d != 0]
    if s <= 0 or d.size == 0:
        return 1.0
    if params.scheme == "kgw":
        gam = params.gamma

        def log_mgf(th: float) -> float:  # log E exp(th d (B - gamma)), B ~ Bernoulli(gamma)
            x = th * d
            return float(np.sum(np.logaddexp(np.log1p(-gam), np.log(gam) + x) - gam * x))

        hi = 50.0 / float(np.abs(d).max())
    else:
        def log_mgf(th: float) -> float:  # log E exp(th d (E - 1)), E ~ Exp(1): needs th d < 1
            x = th * d
            return float(np.sum(-x - np.log1p(-x)))

        dmax = float(d.max())
        hi = (1.0 - 1e-9) / dmax if dmax > 0 else 50.0 / float(np.abs(d).max())
    res = minimize_scalar(lambda th: log_mgf(th) - th * s, bounds=(0.0, hi), method="bounded",
                          options={"xatol": hi * 1e-10})
    return float(min(1.0, np.exp(min(0.0, res.fun))))


def read_distributions(model: Any, prompt_ids: list[int], answer_ids: list[int], max_len: int = 1024) -> Any:
    """Next-token probabilities (float32 tensor [answer positions, V]) at each answer position
    (without a prompt, row 0 is all zeros: nothing predicts the first token)."""
    import torch

    ids = (prompt_ids + answer_ids)[:max_len]
    start = len(prompt_ids)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, max(start - 1, 0) : len(ids) - 1]
    probs = torch.softmax(logits.float(), dim=-1).cpu()
    if start == 0:
        probs = torch.cat([torch.zeros(1, probs.shape[-1]), probs])
    return probs


def shift_tuples(p_s: Any, p_r: Any, answer_ids: Sequence[int], h: int, into: ShiftSet, top_k: int = 32) -> None:
    """Add one context's shifts: every position with a full window inside the answer, over the
    top ``top_k`` tokens of either model (the shift elsewhere is negligible mass)."""
    import torch

    n = min(len(answer_ids), p_s.shape[0], p_r.shape[0])
    if n <= h:
        return
    p_s, p_r = p_s[h:n], p_r[h:n]
    idx = torch.cat([p_s.topk(top_k, dim=-1).indices, p_r.topk(top_k, dim=-1).indices], dim=-1)
    shift = (p_s.gather(1, idx) - p_r.gather(1, idx)).numpy()
    idx_np = idx.numpy()
    for j in range(n - h):
        window = tuple(int(x) for x in answer_ids[j : j + h])
        toks, first = np.unique(idx_np[j], return_index=True)
        into.add(window, toks, shift[j][first])


def audit_shift(
    model: Any,
    reference: Any,
    tok: Any,
    contexts: list[Example],
    params: SchemeParams,
    keys: KeyRing,
    suspect: str = "in-memory model",
    control_keys: int = 5,
    top_k: int = 32,
    progress: bool = True,
) -> AuditResult:
    """Shift audit (see above) of a loaded suspect against a loaded ``reference`` model (the
    watermarking model), both reading the unwatermarked ``contexts``; same tokenizer ``tok``."""
    from rich.progress import track

    started = time.time()
    if not contexts:
        raise AuditError("the shift audit needs contexts written without the watermark key")
    sset = ShiftSet(params.context_width)
    encoded = [_encode_example(tok, ex) for ex in contexts]
    it = track(encoded, description="shift audit", transient=True) if progress else encoded
    for prompt_ids, answer_ids in it:
        if len(answer_ids) <= params.context_width:
            continue
        p_s = read_distributions(model, prompt_ids, answer_ids)
        p_r = read_distributions(reference, prompt_ids, answer_ids)
        shift_tuples(p_s, p_r, answer_ids, params.context_width, sset, top_k)
    res = _conclude("open-weights-shift", suspect, len(contexts), sset, params, keys, control_keys, started,
                    what=f"(window, token) shifts over {sset.positions} positions")
    res.control |= {"p_value_kind": "Chernoff bound (valid, conservative)", "top_k": top_k}
    return res
