"""Radioactivity end to end: SFT a layer-dropped SmolLM2 on N watermarked answers, then audit it.

1. Training data: cached SmolLM2 chat answers (bench/cache/<cache>, written by
   watermark_batchgen.py / watermark_generate.py), watermarked config ``--wm-config`` and the
   unwatermarked config ``none`` of the same prompts, each cut to 128 answer tokens.
2. Students: SmolLM2-135M with every other decoder layer dropped (keep 15 of 30), plain SFT loop
   (loss on answer tokens only), one on watermarked answers, one control on unwatermarked ones.
3. Audits with the bench key: open-weight reading mode on the watermarked training texts (for
   both students and for the untouched base model, which never saw watermarked text), and
   black-box (generate from the student on the training prompts, score with dedup).
CPU time of every stage is recorded.

    nice -n 10 .venv/bin/python bench/watermark_radioactivity.py --n 250 --epochs 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, CACHE, read_cache, write_result  # noqa: E402
from watermark_generate import CONFIGS  # noqa: E402

from distillguard.watermark.audit import Example, audit_black_box, audit_open_weights  # noqa: E402
from distillguard.watermark.keys import KeyRing  # noqa: E402


def layer_dropped_student(src: Path, out: Path, keep_every: int = 2) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    layers = model.model.layers
    kept = torch.nn.ModuleList([layers[i] for i in range(0, len(layers), keep_every)])
    for new_i, layer in enumerate(kept):
        layer.self_attn.layer_idx = new_i
    model.model.layers = kept
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[: len(kept)]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def sft(student: Path, pairs: list[tuple[str, list[int]]], out: Path, epochs: int, lr: float, batch: int) -> dict:
    import torch
    from rich.progress import track
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    examples = []
    for prompt, ans in pairs:
        p = tok(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=False), add_special_tokens=False)["input_ids"][-256:]
        examples.append((p, ans))
    import random

    rnd = random.Random(0)
    steps, tokens = 0, 0
    t_wall, t_cpu = time.time(), time.process_time()
    order = [i for _ in range(epochs) for i in rnd.sample(range(len(examples)), len(examples))]
    for b in track(range(0, len(order), batch), description=f"SFT {out.name}"):
        chunk = [examples[i] for i in order[b : b + batch]]
        L = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), L), tok.pad_token_id or 0)
        labels = torch.full((len(chunk), L), -100)
        attn = torch.zeros((len(chunk), L), dtype=torch.long)
        for r, (p, a) in enumerate(chunk):
            seq = p + a
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, len(p) : len(seq)] = torch.tensor(a)
            attn[r, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        steps += 1
        tokens += int(attn.sum())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"steps": steps, "tokens": tokens, "final_loss": float(loss), "wall_s": time.time() - t_wall,
            "cpu_s": time.process_time() - t_cpu, "tokens_per_s_wall": tokens / (time.time() - t_wall)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--cache", default="wm_chat_hf.jsonl")
    ap.add_argument("--wm-config", default="gumbel1")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--blackbox-prompts", type=int, default=50)
    a = ap.parse_args()

    rows = [r for r in read_cache(a.cache) if r.get("task", "chat") == "chat"]
    by = {}
    for r in rows:
        by.setdefault(r["idx"], {})[r["config"]] = r
    idxs = sorted(i for i, d in by.items() if a.wm_config in d and "none" in d)[: a.n]
    if len(idxs) < a.n:
        print(f"only {len(idxs)} prompts have both configs cached (asked for {a.n}); using {len(idxs)}", file=sys.stderr)
    params = CONFIGS[a.wm_config]
    ring = KeyRing.from_secret(BENCH_SECRET)
    base = CACHE / "smollm2_hf"
    work = CACHE / "radioactivity"
    work.mkdir(parents=True, exist_ok=True)
    init = work / "student_init"
    if not (init / "config.json").is_file():
        layer_dropped_student(base, init)
    result: dict = {"n": len(idxs), "wm_config": a.wm_config, "params": params.describe(), "students": {}}
    wm_examples = [Example(prompt=[{"role": "user", "content": by[i][a.wm_config]["prompt"]}],
                           answer=by[i][a.wm_config]["text"]) for i in idxs]
    for kind, cfg in (("watermarked", a.wm_config), ("control", "none")):
        pairs = [(by[i][cfg]["prompt"], by[i][cfg]["token_ids"][:128]) for i in idxs]
        out = work / f"{kind}_n{len(idxs)}"
        train = sft(init, pairs, out, a.epochs, a.lr, a.batch)
        t_cpu = time.process_time()
        ow = audit_open_weights(out, wm_examples, params, ring, control_keys=5)
        ow_cpu = time.process_time() - t_cpu
        t_cpu = time.process_time()
        bb = audit_black_box(str(out), wm_examples[: a.blackbox_prompts], params, ring, tokenizer=_Tok(base),
                             max_tokens=128, control_keys=5)
        result["students"][kind] = {"train": train, "open_weights": ow.to_dict() | {"cpu_s": ow_cpu},
                                    "black_box": bb.to_dict() | {"cpu_s": time.process_time() - t_cpu}}
        print(kind, "open-weights p =", ow.p_value, "black-box p =", bb.p_value, flush=True)
    ref = audit_open_weights(base, wm_examples, params, ring, control_keys=5)
    result["base_model_never_trained"] = ref.to_dict()
    print("wrote", write_result(f"watermark_radioactivity_n{len(idxs)}", result))


class _Tok:
    """The watermark tokenizer interface over an HF tokenizer folder."""

    def __init__(self, path: Path):
        from transformers import AutoTokenizer

        self._t = AutoTokenizer.from_pretrained(path)
        self.name, self.vocab_size = path.name, len(self._t)

    def encode(self, text: str) -> list[int]:
        return list(self._t(text, add_special_tokens=False)["input_ids"])


if __name__ == "__main__":
    main()
