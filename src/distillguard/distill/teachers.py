"""Teachers that answer prompts for `distill collect`: a local engine or an OpenAI-compatible URL.

Both return a :class:`TeacherAnswer` with the reasoning trace split from the answer (an API's
``reasoning_content`` field, or ``<think>...</think>`` blocks in the text) and, when asked for and
available, the top-k logprobs of every answer token.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from distillguard.distill.config import CollectConfig, TeacherConfig


class TeacherError(RuntimeError):
    """The teacher could not answer (down, refusing, or misconfigured); the message says why."""


@dataclass
class TeacherAnswer:
    text: str
    reasoning: str | None = None
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: [{"token", "logprob", "top": [{"token", "logprob"}, ...]}, ...] or None
    logprobs: list[dict[str, Any]] | None = None
    attempts: int = 1


class Teacher(Protocol):
    name: str

    async def answer(self, messages: list[dict[str, str]], cfg: CollectConfig) -> TeacherAnswer: ...

    async def aclose(self) -> None: ...


_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def split_reasoning(text: str, reasoning: str | None = None) -> tuple[str, str | None]:
    """Separate ``<think>`` blocks (an unclosed one runs to the end) from the visible answer."""
    found = [m.strip() for m in _THINK.findall(text)]
    if found:
        text = _THINK.sub("", text).strip()
        reasoning = "\n".join(x for x in [reasoning, *found] if x) or None
    return text, reasoning


# ---------------------------------------------------------------- local engine (llama.cpp / HF)


class EngineTeacher:
    """Any in-process :class:`~distillguard.engines.base.Engine` as a teacher."""

    def __init__(self, engine: Any, name: str):
        self.engine = engine
        self.name = name

    async def answer(self, messages: list[dict[str, str]], cfg: CollectConfig) -> TeacherAnswer:
        from distillguard.engines.base import SamplingParams

        params = SamplingParams(
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            seed=cfg.seed,
            logprobs=cfg.top_logprobs > 0,
            top_logprobs=cfg.top_logprobs,
        )
        res = await self.engine.generate(messages, params)
        ch = res.choices[0]
        lps = None
        if ch.logprobs is not None:
            lps = [
                {"token": t.token, "logprob": float(t.logprob), "top": [{"token": a, "logprob": float(b)} for a, b in t.top]}
                for t in ch.logprobs
            ]
        text, reasoning = split_reasoning(ch.text)
        return TeacherAnswer(text, reasoning, ch.finish_reason, res.prompt_tokens, res.completion_tokens, lps)

    async def aclose(self) -> None:
        await self.engine.aclose()


class BatchedLocalTeacher:
    """A local teacher run with transformers, many prompts per forward pass.

    On a CPU, one llama.cpp stream is bound by memory bandwidth: every token reads all weights.
    Decoding B prompts at once reads the weights once for B tokens, so per token it is several
    times cheaper. The model is the teacher file itself (a GGUF is de-quantized to float32, the
    same model logit KD later runs alongside the student), greedy or sampled per ``collect``.
    Rows leave the batch as they finish; prompts are left-padded to the longest in the batch,
    so collect sorts them by length first.
    """

    def __init__(self, path: Path, name: str, n_threads: int | None = None, batch_size: int = 16, device: str = "cpu"):
        from distillguard.distill.modelio import load_teacher, resolve_device

        self.device = resolve_device(device)
        self.model, self.tok = load_teacher(path, threads=n_threads, device=self.device)
        self.name = name
        self.batch_size = batch_size
        ends = {self.tok.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ends.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            i = self.tok.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != self.tok.unk_token_id:
                ends.add(i)
        self.end_ids = {i for i in ends if i is not None}

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    async def answer(self, messages: list[dict[str, str]], cfg: CollectConfig) -> TeacherAnswer:
        return (await self.answer_batch([messages], cfg))[0]

    async def answer_batch(self, batch: list[list[dict[str, str]]], cfg: CollectConfig) -> list[TeacherAnswer]:
        return await asyncio.to_thread(self.generate, [self.prompt_ids(m) for m in batch], cfg)

    def generate(self, prompts: list[list[int]], cfg: CollectConfig) -> list[TeacherAnswer]:
        """Greedy (temperature 0) or sampled answers to token-id prompts, one batch."""
        import torch

        B = len(prompts)
        L = max(len(p) for p in prompts)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else next(iter(self.end_ids))
        ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts], device=self.device)
        attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        gen: list[list[int]] = [[] for _ in range(B)]
        tops: list[list[dict[str, Any]]] = [[] for _ in range(B)]
        finish = ["length"] * B
        alive = list(range(B))
        rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        with torch.inference_mode():
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            # logits_to_keep=1: the prompt's other positions would cost B*L*vocab floats for nothing
            out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            for step in range(cfg.max_tokens):
                logits = out.logits[:, -1].float()
                if cfg.temperature > 0:
                    nxt = torch.multinomial(torch.softmax(logits / cfg.temperature, -1), 1, generator=rng)[:, 0]
                else:
                    nxt = logits.argmax(-1)
                if cfg.top_logprobs:
                    logp = torch.log_softmax(logits, -1)
                    top_v, top_i = (x.tolist() for x in logp.topk(cfg.top_logprobs, -1))
                    chosen_lp = logp.gather(-1, nxt[:, None])[:, 0].tolist()
                keep = []
                nxt_host = nxt.tolist()  # one device-to-host copy per step, not one per row
                for r, j in enumerate(alive):
                    t = nxt_host[r]
                    if t in self.end_ids:
                        finish[j] = "stop"
                        continue
                    gen[j].append(t)
                    if cfg.top_logprobs:
                        tops[j].append({
                            "token": self.tok.decode([t]), "logprob": chosen_lp[r],
                            "top": [{"token": self.tok.decode([a]), "logprob": b}
                                    for a, b in zip(top_i[r], top_v[r])],
                        })
                    keep.append(r)
                if not keep or step == cfg.max_tokens - 1:
                    break
                if len(keep) < len(alive):
                    idx = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(idx)
                    attn, nxt = attn[idx], nxt[idx]
                alive = [alive[r] for r in keep]
                attn = torch.cat([attn, torch.ones(len(alive), 1, dtype=attn.dtype)], -1)
                pos = attn.sum(-1, keepdim=True) - 1
                out = self.model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                                 past_key_values=cache, use_cache=True)
        answers = []
        for j in range(B):
            text, reasoning = split_reasoning(self.tok.decode(gen[j], skip_special_tokens=True))
            answers.append(TeacherAnswer(text, reasoning, finish[j], len(prompts[j]), len(gen[j]),
                                         tops[j] if cfg.top_logprobs else None))
        return answers

    async def aclose(self) -> None:
        pass


def local_engine(cfg: TeacherConfig) -> Any:
    """The local teacher engine: llama.cpp for a GGUF file, transformers for an HF folder."""
    from distillguard.models import smollm2_gguf

    path = Path(cfg.model_path) if cfg.model_path else smollm2_gguf()
    if not path.exists():
        raise TeacherError(f"teacher model {path} does not exist; set teacher.model_path to a GGUF file or HF folder")
    if path.is_dir():
        from distillguard.engines.hf import HFEngine

        return HFEngine(path, model_name=cfg.model, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)
    from distillguard.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(path, model_name=cfg.model, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)


# ---------------------------------------------------------------- OpenAI-compatible URL


RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, cfg: CollectConfig, retry_after: float | None) -> float:
    """Exponential backoff with jitter; a server's Retry-After wins when it asks for longer."""
    expo = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2**attempt)) * random.uniform(0.5, 1.0)
    return max(expo, retry_after) if retry_after is not None else expo


class OpenAITeacher:
    """A teacher behind ``POST {url}/chat/completions`` (OpenAI, vLLM, llama.cpp server, our gateway)."""

    def __init__(self, cfg: TeacherConfig, timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None):
        assert cfg.url
        self.name = cfg.model
        self.url = cfg.url.rstrip("/")
        key = cfg.api_key or os.environ.get(cfg.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)
        #: retries done because of 429/5xx/connection errors (for tests and the summary)
        self.retries = 0

    async def answer(self, messages: list[dict[str, str]], cfg: CollectConfig) -> TeacherAnswer:
        body: dict[str, Any] = {
            "model": self.name,
            "messages": messages,
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
            "seed": cfg.seed,
        }
        if cfg.top_logprobs:
            body.update(logprobs=True, top_logprobs=cfg.top_logprobs)
        last = ""
        for attempt in range(cfg.max_retries + 1):
            retry_after = None
            try:
                r = await self.client.post("/chat/completions", json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out: the URL may come back
                last = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code == 200:
                    return self._parse(r.json(), attempt + 1)
                if r.status_code not in RETRY_STATUS:
                    raise TeacherError(f"teacher {self.url} answered {r.status_code}: {r.text[:300]}")
                last = f"HTTP {r.status_code}"
                retry_after = retry_after_seconds(r.headers.get("retry-after"))
            if attempt == cfg.max_retries:
                break
            self.retries += 1
            await asyncio.sleep(backoff_delay(attempt, cfg, retry_after))
        raise TeacherError(f"teacher {self.url} failed after {cfg.max_retries + 1} attempts (last: {last})")

    def _parse(self, data: dict[str, Any], attempts: int) -> TeacherAnswer:
        try:
            ch = data["choices"][0]
            msg = ch["message"]
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"teacher {self.url} returned no choices: {str(data)[:300]}") from None
        reasoning = msg.get("reasoning_content") or msg.get("reasoning")
        text, reasoning = split_reasoning(msg.get("content") or "", reasoning)
        lps = None
        content = (ch.get("logprobs") or {}).get("content")
        if content:
            lps = [
                {
                    "token": t["token"],
                    "logprob": float(t["logprob"]),
                    "top": [{"token": a["token"], "logprob": float(a["logprob"])} for a in t.get("top_logprobs") or []],
                }
                for t in content
            ]
        usage = data.get("usage") or {}
        return TeacherAnswer(
            text,
            reasoning,
            ch.get("finish_reason") or "stop",
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            lps,
            attempts,
        )

    async def aclose(self) -> None:
        await self.client.aclose()


def build_teacher(cfg: TeacherConfig, collect: CollectConfig) -> Teacher:
    if cfg.kind == "openai":
        return OpenAITeacher(cfg, timeout_s=collect.timeout_s)
    if cfg.engine == "batched":
        from distillguard.models import smollm2_gguf

        path = Path(cfg.model_path) if cfg.model_path else smollm2_gguf()
        if not path.exists():
            raise TeacherError(f"teacher model {path} does not exist; set teacher.model_path to a GGUF file or HF folder")
        return BatchedLocalTeacher(path, cfg.model, cfg.n_threads, collect.batch_size, cfg.device)
    return EngineTeacher(local_engine(cfg), cfg.model)
