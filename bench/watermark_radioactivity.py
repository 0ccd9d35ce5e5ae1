"""Radioactivity end to end: SFT a layer-dropped SmolLM2 on N watermarked answers, then audit it.

1. Training data: SmolLM2 answers to the radioactivity prompts (watermark_common.radioactivity_prompts:
   chat sets, natural questions, GSM8K), generated once by watermark_batchgen.py ``--set radio``
   at temperature 0.7 with up to 128 new tokens, watermarked (``--wm-config``, default our
   default scheme) and unwatermarked (``none``) on the same prompts, cached in bench/cache.
2. Students: SmolLM2-135M with every other decoder layer dropped (keep 15 of 30), plain SFT
   (loss on answer tokens only). One separate run per N in ``--ns`` on the first N watermarked
   answers (a student for N = 250 saw 250 answers and nothing else), and one control run on the
   ``--control-n`` unwatermarked answers of the same prompts. Same epochs, learning rate and
   batch for every run, chosen before any result was seen.
3. Audits with the bench key:
   * open weights (reading mode): each student reads the watermarked texts it would have been
     trained on (the first N; the control reads the first control-n watermarked texts, which it
     never saw); so does the untouched base model that generated them (never trained on them);
   * black box: the student answers ``--blackbox-prompts`` of the training prompts (temperature
     0.7, 128 tokens), its answers are scored with deduplication.
   Each audit also reports the same tuples scored under 5 random keys (what an unrelated key says).
Wall and CPU time of every stage are recorded, with the device it ran on.

    nice -n 10 .venv/bin/python bench/watermark_batchgen.py --set radio --chat 1000 --max-tokens 128 \
        --configs none,gumbel1 --out wm_radio.jsonl
    nice -n 10 .venv/bin/python bench/watermark_radioactivity.py --ns 250,500,1000 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, CACHE, read_cache, write_result  # noqa: E402
from watermark_generate import CONFIGS  # noqa: E402

from distillguard.watermark.audit import Example, audit_answers, audit_loaded_model  # noqa: E402
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


def sft(student: Path, pairs: list[tuple[str, list[int], bool]], epochs: int, lr: float, batch: int, device: str):
    """Plain SFT (loss on the answer tokens only); returns (model, tokenizer, stats)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    examples = []
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for prompt, ans, stopped in pairs:
        p = tok(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=False), add_special_tokens=False)["input_ids"][-256:]
        examples.append((p, list(ans) + ([end] if stopped else [])))  # answers cut at 128 tokens get no end
    rnd = random.Random(0)
    steps, tokens, answer_tokens = 0, 0, 0
    t_wall, t_cpu = time.time(), time.process_time()
    order = [i for _ in range(epochs) for i in rnd.sample(range(len(examples)), len(examples))]
    loss = torch.tensor(float("nan"))
    for b in range(0, len(order), batch):
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
        loss = model(input_ids=ids.to(device), attention_mask=attn.to(device), labels=labels.to(device)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        steps += 1
        tokens += int(attn.sum())
        answer_tokens += int((labels != -100).sum())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    model.eval()
    wall = time.time() - t_wall
    return model, tok, {"examples": len(examples), "epochs": epochs, "lr": lr, "batch": batch, "steps": steps,
                        "tokens": tokens, "answer_tokens": answer_tokens, "final_loss": loss.item(),
                        "wall_s": wall, "cpu_s": time.process_time() - t_cpu, "tokens_per_s_wall": tokens / wall,
                        "device": device}


class _Tok:
    """The watermark tokenizer interface over an HF tokenizer."""

    def __init__(self, tok):
        self._t = tok
        self.name, self.vocab_size = "smollm2", len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self._t(text, add_special_tokens=False)["input_ids"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default="250,500,1000", help="watermarked training-set sizes, one student each")
    ap.add_argument("--control-n", type=int, default=1000)
    ap.add_argument("--cache", default="wm_radio.jsonl")
    ap.add_argument("--tasks", default="radio",
                    help="cached tasks to train on: radio (the dedicated set), or e.g. chat,gsm8k to reuse the "
                         "power / GSM8K answers (cut to 128 tokens)")
    ap.add_argument("--wm-config", default="gumbel1")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--blackbox-prompts", type=int, default=100)
    ap.add_argument("--no-base", action="store_true", help="skip auditing the untouched base model")
    ap.add_argument("--filter-seen", action="store_true", help="also the reading audit restricted to seen windows")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="watermark_radioactivity")
    a = ap.parse_args()

    import torch

    from watermark_batchgen import generate_batch
    from watermark_power import load_model

    torch.set_num_threads(min(16, os.cpu_count() or 2))
    tasks = a.tasks.split(",")
    rows = [r for r in read_cache(a.cache) if r.get("task") in tasks]
    by: dict[tuple[int, int], dict[str, dict]] = {}
    for r in rows:
        by.setdefault((tasks.index(r["task"]), r["idx"]), {})[r["config"]] = r
    idxs = sorted(i for i, d in by.items() if a.wm_config in d and "none" in d)
    ns = [int(x) for x in a.ns.split(",")]
    if len(idxs) < max(ns + [a.control_n]):
        raise SystemExit(f"only {len(idxs)} prompts have both configs cached in {a.cache}; "
                         f"generate more with watermark_batchgen.py --set radio")
    params = CONFIGS[a.wm_config]
    ring = KeyRing.from_secret(BENCH_SECRET)
    base_model, base_tok = load_model(a.device)
    ref_tok = _Tok(base_tok)
    work = CACHE / "radioactivity"
    work.mkdir(parents=True, exist_ok=True)
    init = work / "student_init"
    if not (init / "config.json").is_file():
        layer_dropped_student(CACHE / "smollm2_hf", init)

    def examples(cfg: str, n: int) -> list[Example]:
        # the answer as trained on: at most 128 tokens
        return [Example(prompt=[{"role": "user", "content": by[i][cfg]["prompt"]}],
                        answer=base_tok.decode(by[i][cfg]["token_ids"][:128], skip_special_tokens=True))
                for i in idxs[:n]]

    def answer_tokens(cfg: str, n: int) -> int:
        return sum(len(by[i][cfg]["token_ids"][:128]) for i in idxs[:n])

    def audits(model, tok, label: str, n_read: int) -> dict:
        out = {}
        wm_ex = examples(a.wm_config, n_read)
        t_w, t_c = time.time(), time.process_time()
        ow = audit_loaded_model(model, tok, wm_ex, params, ring, suspect=label, reference_tokenizer=ref_tok,
                                control_keys=5, progress=False)
        out["open_weights"] = ow.to_dict() | {"read_texts": n_read, "wall_s": time.time() - t_w,
                                              "cpu_s": time.process_time() - t_c}
        if a.filter_seen:  # only windows seen in served outputs (here the texts read are those outputs)
            ow_f = audit_loaded_model(model, tok, wm_ex, params, ring, suspect=label, reference_tokenizer=ref_tok,
                                      control_keys=5, progress=False, filter_seen=True)
            out["open_weights_filter_seen"] = {"p_value": ow_f.p_value, "tuples_scored": ow_f.tuples_scored}
        bb_ex = wm_ex[: a.blackbox_prompts]
        t_w, t_c = time.time(), time.process_time()
        gen = generate_batch(model, tok, [e.prompt[0]["content"] for e in bb_ex], [None] * len(bb_ex),
                             temperature=0.7, max_tokens=128, device=a.device, seed=1, progress_every=0)
        texts = [tok.decode(g, skip_special_tokens=True) for g in gen]
        bb = audit_answers(label, bb_ex, texts, params, ring, ref_tok, control_keys=5)
        out["black_box"] = bb.to_dict() | {"prompts": len(bb_ex), "wall_s": time.time() - t_w,
                                           "cpu_s": time.process_time() - t_c}
        print(f"{label}: open-weights p = {ow.p_value:.3g} ({ow.tuples_scored} tuples), "
              f"black-box p = {bb.p_value:.3g} ({bb.tuples_scored} tuples)", flush=True)
        return out

    result: dict = {
        "setup": {
            "teacher": "SmolLM2-135M-Instruct (float32, dequantised from the served GGUF)",
            "student": "the teacher with every other decoder layer dropped (15 of 30), then SFT",
            "data": f"{a.cache} tasks {a.tasks}: SmolLM2 answers at temperature 0.7, cut to <= 128 tokens, "
                    "generated once and reused (radio = watermark_common.radioactivity_prompts(); chat/gsm8k = "
                    "the power and GSM8K runs' answers)",
            "wm_config": a.wm_config, "params": params.describe(), "device": a.device,
            "epochs": a.epochs, "lr": a.lr, "batch": a.batch, "blackbox_prompts": a.blackbox_prompts,
        },
        "students": {},
    }
    runs = [(f"watermarked_n{n}", a.wm_config, n) for n in ns] + [(f"control_n{a.control_n}", "none", a.control_n)]
    for label, cfg, n in runs:
        pairs = [(by[i][cfg]["prompt"], by[i][cfg]["token_ids"][:128],
                  by[i][cfg]["finish_reason"] == "stop" and len(by[i][cfg]["token_ids"]) <= 128) for i in idxs[:n]]
        model, tok, train = sft(init, pairs, a.epochs, a.lr, a.batch, a.device)
        train["training_answer_tokens"] = answer_tokens(cfg, n)
        result["students"][label] = {"config": cfg, "n": n, "train": train} | audits(model, tok, label, n)
        del model
        write_result(a.name, result | {"partial": True})  # a run cut short keeps what it measured
    if not a.no_base:
        result["base_model_never_trained"] = audits(base_model, base_tok, "base SmolLM2 (generated the texts)",
                                                    max(ns))
    p1000 = result["students"].get("watermarked_n1000", {}).get("open_weights", {}).get("p_value")
    pc = result["students"][f"control_n{a.control_n}"]["open_weights"]["p_value"]
    result["goals"] = {"open_weights_p_at_n1000<=1e-6": None if p1000 is None else p1000 <= 1e-6,
                       "control_p>0.01": pc > 0.01}
    print("wrote", write_result(a.name, result))


if __name__ == "__main__":
    main()
