"""Teacher records -> token ids for training and eval (chat template applied, answer span marked)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillguard.distill.collect import load_records
from distillguard.distill.prompts import is_heldout


class DataError(ValueError):
    pass


@dataclass
class Example:
    id: str
    input_ids: list[int]
    #: index of the first answer token; loss and metrics cover input_ids[answer_start:]
    answer_start: int
    #: for top-k KD: per answer token, the teacher's top ids and logprobs
    top_ids: list[list[int]] | None = None
    top_logp: list[list[float]] | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False)


def split_records(path: Path, heldout_fraction: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, heldout) records, deduplicated by prompt id; the split is recomputed from the id."""
    recs = load_records(path)
    if not recs:
        raise DataError(f"no teacher answers in {path}; run `distillguard distill collect` first")
    seen: set[str] = set()
    train, held = [], []
    for r in recs:
        if r["id"] in seen or not r.get("response"):
            continue
        seen.add(r["id"])
        (held if is_heldout(r["id"], heldout_fraction) else train).append(r)
    return train, held


def answer_text(rec: dict[str, Any], include_reasoning: bool) -> str:
    if include_reasoning and rec.get("reasoning"):
        return f"<think>\n{rec['reasoning']}\n</think>\n{rec['response']}"
    return rec["response"]


def prompt_ids(tok: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def encode(rec: dict[str, Any], tok: Any, max_length: int, include_reasoning: bool = True) -> Example | None:
    """Prompt (chat template) + teacher answer (+ end-of-turn if the teacher stopped by itself)."""
    p = prompt_ids(tok, rec["messages"])
    a = tok(answer_text(rec, include_reasoning), add_special_tokens=False)["input_ids"]
    if rec.get("finish_reason") == "stop" and tok.eos_token_id is not None:
        a = a + [tok.eos_token_id]
    if len(p) + 4 > max_length or not a:
        return None  # prompt alone fills the window: nothing left to learn from
    ids = (p + a)[:max_length]
    return Example(rec["id"], ids, len(p), record=rec)


def token_index(tok: Any) -> dict[str, int]:
    """Decoded text of each token -> id, to map an API's logprob tokens back to ids."""
    index: dict[str, int] = {}
    for i in range(len(tok)):
        index.setdefault(tok.decode([i]), i)
    return index


def encode_topk(rec: dict[str, Any], tok: Any, max_length: int, index: dict[str, int]) -> Example | None:
    """Use the teacher's own token sequence (from its logprobs) so targets line up one to one."""
    lps = rec.get("logprobs") or []
    if not lps:
        return None
    ids: list[int] = []
    top_ids: list[list[int]] = []
    top_logp: list[list[float]] = []
    for e in lps:
        if e["token"] not in index:
            return None  # a token we cannot name in our vocabulary: the tokenizers differ
        ids.append(index[e["token"]])
        row_ids, row_lp, seen = [], [], set()
        for alt in e.get("top") or [{"token": e["token"], "logprob": e["logprob"]}]:
            j = index.get(alt["token"])
            if j is None or j in seen:
                continue  # unknown or duplicate names fall into the tail bucket
            seen.add(j)
            row_ids.append(j)
            row_lp.append(float(alt["logprob"]))
        top_ids.append(row_ids)
        top_logp.append(row_lp)
    p = prompt_ids(tok, rec["messages"])
    if len(p) + 4 > max_length:
        return None
    keep = max_length - len(p)
    return Example(rec["id"], p + ids[:keep], len(p), top_ids[:keep], top_logp[:keep], record=rec)


def make_batches(examples: list[Example], batch_size: int) -> list[list[int]]:
    """Batches of similar length (less padding); the trainer shuffles their order per epoch."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors plus ``target_mask`` = positions whose *next* token is an answer token."""
    import torch

    L = max(len(e.input_ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    target_mask = torch.zeros((B, L - 1), dtype=torch.bool)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids)
        attn[b, :n] = 1
        # logits at position t predict token t+1: answer tokens start..n-1 <- positions start-1..n-2
        target_mask[b, e.answer_start - 1 : n - 1] = True
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": attn, "target_mask": target_mask}
    if examples[0].top_ids is not None:
        k = max((len(r) for e in examples for r in e.top_ids or []), default=1) or 1
        N = int(target_mask.sum())
        top_ids = torch.zeros((N, k), dtype=torch.long)
        top_lp = torch.full((N, k), float("-inf"))
        valid = torch.zeros((N, k), dtype=torch.bool)
        row = 0
        for e in examples:
            n_ans = len(e.input_ids) - e.answer_start
            for r in range(n_ans):
                tids, tlp = e.top_ids[r], e.top_logp[r]
                top_ids[row, : len(tids)] = torch.tensor(tids, dtype=torch.long)
                top_lp[row, : len(tlp)] = torch.tensor(tlp)
                valid[row, : len(tids)] = True
                row += 1
        batch.update(top_ids=top_ids, top_logp=top_lp, top_valid=valid)
    return batch


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """The batch's tensors on ``device`` (a no-op on the CPU, where collate makes them)."""
    return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}


def answer_logits(model: Any, batch: dict[str, Any], hidden: bool = False) -> Any:
    """Next-token logits at the answer positions only (``batch["target_mask"]``), [N, vocab].

    The same numbers as ``model(...).logits[:, :-1][mask]``, but the LM head (a vocab x hidden
    matmul per position: 28M multiply-adds for SmolLM2, a third of a 15-layer student's forward)
    runs only where a loss or metric is taken, not on the prompt. Causal LMs whose head is a
    plain projection of the last hidden state (Llama family) take this path; others fall back.

    ``hidden=True`` returns ``(logits, hidden_states)`` with transformers' tuple of residual
    streams (``hidden_states[j]`` is the input of layer j), for hidden-state alignment.
    """
    mask = batch["target_mask"]
    head = model.get_output_embeddings()
    base = getattr(model, "base_model", None)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "output_hidden_states": hidden}
    if head is None or base is None or base is model or getattr(model.config, "final_logit_softcapping", None):
        out = model(**kw)
        logits = out.logits[:, :-1][mask]
    else:
        out = base(**kw)
        logits = head(out.last_hidden_state[:, :-1][mask])
    return (logits, out.hidden_states) if hidden else logits
