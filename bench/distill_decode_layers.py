"""llama.cpp decode time per token vs the number of kept layers: how much of it is fixed cost?

Issue #5 wants a 15-of-30-layer SmolLM2-135M-Instruct student to decode >= 1.8x faster than its
teacher in llama.cpp; it measured 1.69x. The LM head (49,152 x 576, tied to the embeddings, Q8_0)
and the rest of the per-token work outside the layers do not shrink with the layer count, so the
ratio is capped. This script measures the split:

    decode seconds per token  t(n) = a + b * n        (a: head and fixed cost, b: one layer)

from the llama.cpp decode speeds of GGUF files that keep n of the teacher's layers, all timed in
the same run, interleaved prompt by prompt (model order rotated each time) over several rounds,
median per model. Decode speed does not depend on trained weights, so the students are untrained
layer subsets (copy_layers), exported like `distill export --dtype q4_1` does. The 30-layer model
is timed twice: the teacher's own file, and all 30 layers re-exported through our exporter (it
should decode at the same speed; if not, our tensor types differ).

    .venv/bin/python bench/distill_decode_layers.py --rounds 3 --prompts 10 --tokens 128

Prefill is timed apart from decode; every model decodes exactly --tokens greedy tokens (the
end-of-turn token masked), one thread, as in bench/distill_benchmark.py's llamacpp_speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# the benchmark's student (bench/distill_config.toml)
BENCH_15 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 27, 28, 29]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def machine_facts() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), None)
    flags: set[str] = set()
    for ln in cpuinfo.splitlines():
        if ln.startswith("flags"):
            flags |= set(ln.split(":", 1)[1].split())
    relevant = sorted(f for f in flags if f in {"avx", "avx2", "fma", "f16c", "avx_vnni"} or f.startswith(("avx512", "amx")))
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        nproc = None
    mem = None
    if Path("/proc/meminfo").is_file():
        mem = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/meminfo").read_text().splitlines()
                    if ln.startswith("MemTotal")), None)
    return {"platform": platform.platform(), "cpu_model": model, "nproc": nproc, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_flags_relevant": relevant, "avx2": "avx2" in flags,
            "avx512": any(f.startswith("avx512") for f in flags), "amx": any(f.startswith("amx") for f in flags),
            "mem_total": mem, "python": platform.python_version()}


def gguf_tensor_types(path: Path) -> dict:
    """Tensor count per GGML type and the type of the token embedding (= the tied LM head)."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    counts: dict[str, int] = {}
    embd = None
    out = None
    for t in r.tensors:
        name = t.tensor_type.name
        counts[name] = counts.get(name, 0) + 1
        if t.name == "token_embd.weight":
            embd = name
        if t.name == "output.weight":
            out = name
    blk = r.fields.get("llama.block_count")
    return {"types": dict(sorted(counts.items())), "token_embd": embd, "output_weight": out,
            "block_count": int(blk.contents()) if blk is not None else None, "bytes": path.stat().st_size}


def build_students(teacher_gguf: Path, specs: dict[str, list[int]], cache: Path) -> dict[str, dict]:
    """GGUF Q4_1 files of layer-subset students (untrained copies of the teacher's layers)."""
    from distillguard.distill.export import write_gguf
    from distillguard.distill.modelio import load_teacher
    from distillguard.distill.student import copy_layers

    teacher, tok = load_teacher(teacher_gguf, threads=1)
    built = {}
    for name, keep in specs.items():
        path = cache / f"{name}.q4_1.gguf"
        meta = cache / f"{name}.json"
        rec = {"keep": keep, "n_layers": len(keep), "path": str(path), "source": str(teacher_gguf)}
        if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("keep") == keep \
                and json.loads(meta.read_text()).get("source_mtime") == teacher_gguf.stat().st_mtime:
            rec["built"] = "cached"
        else:
            t0 = time.time()
            student = copy_layers(teacher, keep)
            hf_dir = cache / name / "hf"
            hf_dir.mkdir(parents=True, exist_ok=True)
            student.save_pretrained(hf_dir, safe_serialization=True)
            tok.save_pretrained(hf_dir)
            tmp = path.with_suffix(".tmp")
            n = write_gguf(student, tok, hf_dir, tmp, dtype="q4_1", source=str(teacher_gguf))
            tmp.rename(path)
            meta.write_text(json.dumps({"keep": keep, "source_mtime": teacher_gguf.stat().st_mtime, "tensors": n}))
            rec["built"] = f"{time.time() - t0:.1f} s"
            del student
        built[name] = rec
    return built


def prompts_from(dataset: Path, n: int, tok) -> tuple[list[str], list[list[int]]]:
    from distillguard.distill.data import prompt_ids

    qs = []
    with dataset.open() as f:
        for line in f:
            if line.strip():
                qs.append(json.loads(line)["question"])
            if len(qs) >= n:
                break
    return qs, [prompt_ids(tok, [{"role": "user", "content": q}]) for q in qs]


def fit_line(ns: list[float], ts: list[float]) -> dict:
    """Least squares t = a + b n; R^2."""
    import numpy as np

    x, y = np.asarray(ns, float), np.asarray(ts, float)
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"a_s": float(a), "b_s": float(b), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
            "residuals_ms": [float(r * 1e3) for r in (y - pred)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/distill_decode_layers.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="greedy tokens decoded per prompt per model")
    ap.add_argument("--prompts", type=int, default=10, help="NQ-open questions (chat template) per round")
    ap.add_argument("--layers", default="24,15,12,10,8", help="student layer counts besides 30 (15 = the benchmark's 0-11 + 27-29)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "nq_open_dev.jsonl"))
    ap.add_argument("--cache", default="bench/cache/decode-layers")
    ap.add_argument("--target", type=float, default=1.8, help="speedup goal (issue #5)")
    a = ap.parse_args()

    started = now()
    load_before = os.getloadavg()
    facts = machine_facts()
    import numpy as np
    import torch
    import llama_cpp
    from llama_cpp import Llama
    from tqdm import tqdm

    from distillguard.distill.modelio import load_teacher
    from distillguard.distill.student import select_layers
    from distillguard.models import smollm2_gguf

    facts.update({"torch": torch.__version__, "llama_cpp": llama_cpp.__version__, "numpy": np.__version__})
    try:
        facts["llama_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    except Exception:  # noqa: BLE001 - informational only
        pass

    teacher_gguf = smollm2_gguf()
    cache = (ROOT / a.cache) if not Path(a.cache).is_absolute() else Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    specs: dict[str, list[int]] = {"export-30": list(range(30))}
    for n in (int(x) for x in a.layers.split(",") if x):
        specs[f"student-{n}"] = BENCH_15 if n == 15 else select_layers(30, None, n)

    t0 = time.time()
    print(f"building {len(specs)} GGUF files under {cache} ...", flush=True)
    built = build_students(teacher_gguf, specs, cache)
    build_s = time.time() - t0
    tok = load_teacher(teacher_gguf, threads=1)[1]
    questions, prompts = prompts_from(Path(a.dataset), a.prompts, tok)

    files = {"teacher-30": {"path": str(teacher_gguf), "n_layers": 30, "keep": list(range(30)), "built": "teacher's own file"}}
    files.update(built)
    for rec in files.values():
        rec["gguf"] = gguf_tensor_types(Path(rec["path"]))

    names = list(files)
    models = {k: Llama(files[k]["path"], n_ctx=1024, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
              for k in names}
    # per model, per round: decode/prefill tokens and seconds
    rounds = {k: [{"decode_tokens": 0, "decode_s": 0.0, "prefill_tokens": 0, "prefill_s": 0.0} for _ in range(a.rounds)]
              for k in names}
    per_call: list[dict] = []
    load_per_round = []
    total = a.rounds * len(prompts) * len(names)
    t_bench = time.time()
    try:
        with tqdm(total=total, desc="decode", unit="gen", dynamic_ncols=True) as bar:
            for r in range(a.rounds):
                for p, ids in enumerate(prompts):
                    k0 = (r * len(prompts) + p) % len(names)  # rotate who goes first
                    for name in names[k0:] + names[:k0]:
                        llm = models[name]
                        llm.reset()
                        t_a = time.perf_counter()
                        llm.eval(ids)
                        t_b = time.perf_counter()
                        for _ in range(a.tokens):
                            z = np.array(llm.scores[llm.n_tokens - 1], copy=True)
                            z[llm.token_eos()] = -np.inf
                            llm.eval([int(z.argmax())])
                        t_c = time.perf_counter()
                        s = rounds[name][r]
                        s["prefill_tokens"] += len(ids)
                        s["prefill_s"] += t_b - t_a
                        s["decode_tokens"] += a.tokens
                        s["decode_s"] += t_c - t_b
                        per_call.append({"round": r, "prompt": p, "model": name, "prompt_tokens": len(ids),
                                         "prefill_s": round(t_b - t_a, 5), "decode_s": round(t_c - t_b, 5)})
                        bar.set_postfix_str(f"r{r} p{p} {name} {a.tokens / (t_c - t_b):.1f} tok/s")
                        bar.update()
                load_per_round.append(os.getloadavg())
    finally:
        for llm in models.values():
            llm.close()
    bench_s = time.time() - t_bench

    per_model = {}
    for name in names:
        tps = [s["decode_tokens"] / s["decode_s"] for s in rounds[name]]
        pps = [s["prefill_tokens"] / s["prefill_s"] for s in rounds[name]]
        per_model[name] = {"n_layers": files[name]["n_layers"], "decode_tok_s_per_round": [round(x, 3) for x in tps],
                           "decode_tok_s_median": statistics.median(tps),
                           "decode_ms_per_token_median": 1e3 / statistics.median(tps),
                           "prefill_tok_s_per_round": [round(x, 2) for x in pps], "prefill_tok_s_median": statistics.median(pps)}
    teacher_tps = per_model["teacher-30"]["decode_tok_s_median"]
    for name in names:
        pm = per_model[name]
        pm["speedup_vs_teacher_file"] = pm["decode_tok_s_median"] / teacher_tps
        # per round (the same round's teacher): the spread of the ratio
        pm["speedup_per_round"] = [round(x / y, 4) for x, y in
                                   zip(pm["decode_tok_s_per_round"], per_model["teacher-30"]["decode_tok_s_per_round"])]
        pm["prefill_speedup_vs_teacher_file"] = pm["prefill_tok_s_median"] / per_model["teacher-30"]["prefill_tok_s_median"]

    def fit_over(keys: list[str], tps_of) -> dict:
        ns = [files[k]["n_layers"] for k in keys]
        ts = [1.0 / tps_of(k) for k in keys]
        f = fit_line(ns, ts)
        aa, bb = f["a_s"], f["b_s"]
        t30 = aa + 30 * bb
        n_max = int(np.floor((t30 / a.target - aa) / bb)) if bb > 0 else None
        f.update({"models": keys, "a_ms": aa * 1e3, "b_ms_per_layer": bb * 1e3, "t30_fit_ms": t30 * 1e3,
                  "head_and_fixed_share_of_teacher": aa / t30, "ceiling_speedup_n_to_0": t30 / aa if aa > 0 else None,
                  f"largest_n_predicted_ge_{a.target}x": n_max,
                  f"n_at_exactly_{a.target}x": (t30 / a.target - aa) / bb if bb > 0 else None,
                  "predicted_speedup": {str(n): t30 / (aa + bb * n) for n in sorted({30, 24, 15, 12, 10, 8, 6, 4, 1, *ns}, reverse=True)}})
        return f

    exported = [k for k in names if k != "teacher-30"]  # one exporter, one set of tensor types
    med = lambda k: per_model[k]["decode_tok_s_median"]  # noqa: E731
    fit_main = fit_over(exported, med)
    fit_teacher_file = fit_over([k for k in names if k != "export-30"], med)
    fit_all = fit_over(names, med)
    fit_rounds = [fit_over(exported, lambda k, r=r: rounds[k][r]["decode_tokens"] / rounds[k][r]["decode_s"])
                  for r in range(a.rounds)]
    for name in names:
        n = files[name]["n_layers"]
        per_model[name]["predicted_speedup_fit"] = fit_main["predicted_speedup"].get(str(n))
        per_model[name]["measured_speedup_vs_export30"] = med(name) / med("export-30")

    result = {
        "benchmark": "distill_decode_layers",
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "started": started,
        "finished": now(),
        "build_s": round(build_s, 1),
        "bench_s": round(bench_s, 1),
        "machine": {**facts, "load_avg_before": load_before, "load_avg_per_round": load_per_round,
                    "load_avg_after": os.getloadavg()},
        "settings": {"rounds": a.rounds, "tokens": a.tokens, "prompts": len(prompts), "threads": a.threads, "n_ctx": 1024,
                     "dataset": a.dataset, "greedy": True, "eos_masked": True,
                     "order": "round-robin: for each round, each prompt, every model in turn, starting model rotated"},
        "prompt_tokens": [len(x) for x in prompts],
        "questions": questions,
        "files": files,
        "exporter_matches_teacher_file": {
            "same_tensor_types": files["export-30"]["gguf"]["types"] == files["teacher-30"]["gguf"]["types"],
            "same_token_embd_type": files["export-30"]["gguf"]["token_embd"] == files["teacher-30"]["gguf"]["token_embd"],
            "bytes": [files["teacher-30"]["gguf"]["bytes"], files["export-30"]["gguf"]["bytes"]],
            "decode_speed_ratio_export_over_teacher": med("export-30") / teacher_tps},
        "per_model": per_model,
        "fit": {"main": fit_main, "note": "main: the exported files (export-30, students); speedups are fitted t(30) / t(n)",
                "with_teacher_file_instead_of_export30": fit_teacher_file, "all_points": fit_all,
                "per_round_main": [{k: f[k] for k in ("a_ms", "b_ms_per_layer", "r2", "ceiling_speedup_n_to_0",
                                                       f"largest_n_predicted_ge_{a.target}x")} for f in fit_rounds]},
        "per_call": per_call,
    }
    out = ROOT / a.out if not Path(a.out).is_absolute() else Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(f"\n{'model':12} {'n':>3} {'tok/s':>8} {'ms/tok':>7} {'speedup':>8} {'pred':>6}  per-round tok/s")
    for name in names:
        pm = per_model[name]
        print(f"{name:12} {pm['n_layers']:>3} {pm['decode_tok_s_median']:8.2f} {pm['decode_ms_per_token_median']:7.2f} "
              f"{pm['speedup_vs_teacher_file']:8.3f} {pm['predicted_speedup_fit']:6.3f}  {pm['decode_tok_s_per_round']}")
    f = fit_main
    print(f"fit (exported files): a = {f['a_ms']:.3f} ms, b = {f['b_ms_per_layer']:.4f} ms/layer, R^2 = {f['r2']:.4f}; "
          f"ceiling t(30)/a = {f['ceiling_speedup_n_to_0']:.2f}x; largest n >= {a.target}x: {f[f'largest_n_predicted_ge_{a.target}x']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
