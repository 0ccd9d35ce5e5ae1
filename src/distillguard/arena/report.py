"""report.html + PNGs from the run's numbers: a page a person can read top to bottom."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.detect.templates import user_text


# ---------------------------------------------------------------- topic map
def topic_map(events: list[dict[str, Any]], labels: dict[str, dict[str, Any]], k: int, seed: int,
              threads: int = 1) -> dict[str, Any]:
    """KMeans over MiniLM embeddings of the prompts; each topic named by its top TF-IDF terms."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [user_text(e.get("request") or {})[:400] for e in events]
    if len(texts) < 2:
        return {"labels": [], "k": 0}
    try:
        from distillguard.detect.embed import MiniLMEmbedder

        X = np.asarray(MiniLMEmbedder(max_seq_length=64, batch_size=64, threads=threads).embed(texts))
        how = "MiniLM-L6 embeddings"
    except Exception as exc:  # noqa: BLE001 - the report still gets a (weaker) map, and says so
        X = TfidfVectorizer(max_features=2000, stop_words="english").fit_transform(texts).toarray()
        how = f"TF-IDF vectors (MiniLM unavailable: {type(exc).__name__})"
    k = max(2, min(k, len(set(texts)) - 1 if len(set(texts)) > 2 else 2))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(X)
    assign = km.labels_
    tf = TfidfVectorizer(max_features=3000, stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
    T = tf.fit_transform(texts)
    vocab = np.array(tf.get_feature_names_out())
    names = topic_names(T, assign, vocab, k)
    accounts = sorted({e["account"] for e in events}, key=lambda a: (-(labels.get(a, {}).get("label") or 0), a))
    acc_idx = {a: i for i, a in enumerate(accounts)}
    mat_a = np.zeros((len(accounts), k))
    ts = np.array([e["ts"] for e in events])
    t0, t1 = float(ts.min()), float(ts.max())
    nb = 12
    mat_t = np.zeros((k, nb))
    for e, c, t in zip(events, assign, ts, strict=True):
        mat_a[acc_idx[e["account"]], c] += 1
        mat_t[c, min(nb - 1, int((t - t0) / max(1e-9, t1 - t0) * nb))] += 1
    return {"k": k, "names": names, "how": how, "accounts": accounts, "matrix_account": mat_a.tolist(),
            "matrix_time": mat_t.tolist(), "t0": t0, "t1": t1, "sizes": np.bincount(assign, minlength=k).tolist()}


def topic_names(T: Any, assign: np.ndarray, vocab: np.ndarray, k: int, n_terms: int = 3) -> list[str]:
    """Each topic named by the terms that set it apart: its mean TF-IDF minus the highest mean of
    any other topic (the plain top terms name two topics of one domain alike, e.g. two coding
    topics both "step / function / python"); a name another topic already has gets more terms
    until it differs."""
    means = np.zeros((k, T.shape[1]))
    for c in range(k):
        if (assign == c).any():
            means[c] = np.asarray(T[assign == c].mean(axis=0)).ravel()
    names: list[str] = []
    for c in range(k):
        if not (assign == c).any():
            names.append(f"topic {c}")
            continue
        inside = means[c]
        others = np.delete(means, c, axis=0)
        outside = others.max(axis=0) if len(others) else np.zeros_like(inside)
        order = [int(i) for i in np.argsort(-(inside - outside), kind="stable") if inside[i] > 0]
        terms = [str(vocab[i]) for i in order[:n_terms]]
        j = n_terms
        while " / ".join(terms) in names and j < len(order):
            terms.append(str(vocab[order[j]]))
            j += 1
        name = " / ".join(terms) or f"topic {c}"
        names.append(name if name not in names else f"{name} ({c})")
    return names


# ---------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_risk(det: dict[str, Any], labels: dict[str, dict[str, Any]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4.8))
    t0 = det["t0"]
    for acct, pts in sorted(det["series"].items()):
        lab = labels.get(acct, {}).get("label")
        x = [(t - t0) / 3600 for t, _ in pts]
        y = [r for _, r in pts]
        ax.plot(x, y, color="#c0392b" if lab == 1 else "#7f8c8d", alpha=0.9 if lab == 1 else 0.45,
                lw=1.4 if lab == 1 else 0.9, drawstyle="steps-post")
    labelled: dict[tuple[float, float], list[str]] = {}
    for r in det["table"]:
        if r["flagged_after_h"] is not None:
            y = next((v for t, v in det["series"].get(r["account"], []) if t >= r["flagged_at"]), det["threshold"])
            ax.plot([r["flagged_after_h"]], [y], marker="v", ms=9, color="black" if r["label"] == 1 else "orange",
                    zorder=5)
            labelled.setdefault((round(r["flagged_after_h"], 1), round(y, 2)), []).append(r["account"])
    for (x, y), names in labelled.items():  # linked accounts flag together: one label for the group
        text = names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1} linked"
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.axhline(det["threshold"], ls="--", color="k", lw=1)
    ax.text(1.0, det["threshold"] + 0.01, f"flag threshold {det['threshold']:.2f}", fontsize=8, ha="right",
            transform=ax.get_yaxis_transform())
    ax.set_xlabel("simulated hours since the first request")
    ax.set_ylabel("risk (replayed online detector)")
    ax.set_ylim(0, 1.02)
    from matplotlib.lines import Line2D

    # below the axes: inside, it hid the benign accounts' lines along the bottom
    fig.legend(handles=[Line2D([], [], color="#c0392b", label="attacker accounts"),
                        Line2D([], [], color="#7f8c8d", label="benign accounts"),
                        Line2D([], [], color="k", marker="v", ls="", label="flagged (attacker)"),
                        Line2D([], [], color="orange", marker="v", ls="", label="flagged (benign)")],
               loc="lower center", ncol=4, fontsize=8, frameon=False)
    ax.set_title("Per-account risk over time")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_heatmaps(topics: dict[str, Any], labels: dict[str, dict[str, Any]], path: Path) -> None:
    plt = _plt()
    mat = np.array(topics["matrix_account"])
    accts = topics["accounts"]
    h = max(4.0, 0.22 * len(accts) + 1.5)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, h), gridspec_kw={"width_ratios": [1.3, 1]})
    share = mat / np.maximum(1, mat.sum(axis=1, keepdims=True))
    im1 = a1.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im1, ax=a1, fraction=0.04, pad=0.02).set_label("share of the account's prompts", fontsize=8)
    a1.set_yticks(range(len(accts)))
    a1.set_yticklabels([f"{'[A] ' if labels.get(a, {}).get('label') == 1 else ''}{a}" for a in accts], fontsize=7)
    a1.set_xticks(range(topics["k"]))
    a1.set_xticklabels([f"T{i}" for i in range(topics["k"])], fontsize=8)
    a1.set_title("share of each account's prompts per topic ([A] = attacker)", fontsize=9)
    mt = np.array(topics["matrix_time"])
    im2 = a2.imshow(mt, aspect="auto", cmap="magma")
    fig.colorbar(im2, ax=a2, fraction=0.05, pad=0.02).set_label("requests", fontsize=8)
    a2.set_yticks(range(topics["k"]))
    a2.set_yticklabels([f"T{i}: {n[:38]}" for i, n in enumerate(topics["names"])], fontsize=7)
    span_h = (topics["t1"] - topics["t0"]) / 3600
    a2.set_xticks(range(mt.shape[1]))
    a2.set_xticklabels([f"{span_h * (i + 0.5) / mt.shape[1]:.0f}h" for i in range(mt.shape[1])], fontsize=7)
    a2.set_title("requests per topic over simulated time", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=105)
    plt.close(fig)


def fig_roc(roc: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    if roc.get("fpr"):
        ax.plot(roc["fpr"], roc["tpr"], marker="o", ms=3, color="#2c3e50", label=f"AUC = {roc['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set_xlabel("false-positive rate (benign accounts)")
    ax.set_ylabel("true-positive rate (attacker accounts)")
    ax.set_title(f"ROC over {roc.get('accounts', 0)} accounts")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_yield(m: dict[str, Any], path: Path) -> None:
    plt = _plt()
    y = m["attacker_yield"]
    imp = m["legitimate_impact"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    vals = [y["tokens_without_defences"], y["tokens"]]
    bars = a1.bar(["without defences\n(counterfactual)", "with DistillGuard"], vals, color=["#95a5a6", "#c0392b"])
    for b, v in zip(bars, vals, strict=True):
        a1.text(b.get_x() + b.get_width() / 2, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=9)
    a1.set_ylabel("answer tokens the attacker obtained")
    a1.set_title("Attacker yield" + (f" (÷{y['reduction']:.1f})" if y.get("reduction") else ""))
    vals2 = [100 * imp["without_defences"], 100 * imp["share"]]
    bars = a2.bar(["without defences", "with DistillGuard"], vals2, color=["#95a5a6", "#2980b9"])
    for b, v in zip(bars, vals2, strict=True):
        a2.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}%", ha="center", va="bottom", fontsize=9)
    a2.set_ylabel("% of benign requests")
    a2.set_ylim(0, max(1.0, max(vals2) * 1.3))
    a2.set_title("Legitimate impact (throttled / degraded / blocked)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_watermark(m: dict[str, Any], path: Path) -> bool:
    plt = _plt()
    rows = []
    wm = m.get("watermark", {})
    for label, d in (("attacker answers\n(gateway key)", wm.get("attacker")),
                     ("attacker answers\n(random key)", wm.get("attacker_random_key")),
                     ("benign answers\n(gateway key)", wm.get("benign"))):
        if d:
            rows.append((label, d["p_value"]))
    ra = (m.get("student") or {}).get("radioactivity") or {}
    if ra.get("student"):
        rows.append(("attacker student\n(radioactivity)", ra["student"]["p_value"]))
        ref = ra["student"].get("control", {}).get("reference_model")
        if ref:
            rows.append(("student before\ntraining (reference)", ref["p_value"]))
        for i, p in enumerate(ra["student"].get("control", {}).get("random_key_p_values", [])[:2]):
            rows.append((f"attacker student\n(random key {i + 1})", p))
    if ra.get("control_student"):
        rows.append(("control student\n(no watermark)", ra["control_student"]["p_value"]))
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(10, 4.2))
    vals = [-math.log10(max(p, 1e-300)) for _, p in rows]
    bars = ax.bar([r[0] for r in rows], vals, color=["#8e44ad" if "random" not in r[0] and "reference" not in r[0]
                                                      and "control" not in r[0] else "#bdc3c7" for r in rows])
    line = -math.log10(0.01)
    top = max(vals + [line])
    for b, (_, p) in zip(bars, rows, strict=True):
        # above the bar and above the p = 0.01 line (a label on a short bar sat on the line)
        y = max(b.get_height(), line) + 0.015 * top
        ax.text(b.get_x() + b.get_width() / 2, y, f"p={p:.1e}", ha="center", va="bottom", fontsize=8)
    ax.axhline(line, ls="--", color="k", lw=1, label="p = 0.01")
    ax.set_ylim(0, top * 1.12)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("-log10 p-value")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title("Watermark evidence (higher = stronger evidence the text / model came from this gateway)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def fig_quality(m: dict[str, Any], path: Path) -> bool:
    q = ((m.get("student") or {}).get("quality") or {}).get("models")
    if not q:
        return False
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r["name"] for r in q]
    ppl = [r.get("perplexity") or 0 for r in q]
    bars = a1.bar(names, ppl, color="#16a085")
    for b, v in zip(bars, ppl, strict=True):
        a1.text(b.get_x() + b.get_width() / 2, max(v, 1.0), f"{v:,.1f}" if v < 1000 else f"{v:.2g}", ha="center",
                va="bottom", fontsize=8)
    a1.set_ylabel("perplexity of held-out\nteacher answers (log)")
    a1.set_yscale("log")
    a1.set_ylim(top=max(ppl + [10.0]) * 4)
    rl = [r.get("rouge_l") or 0 for r in q]
    bars = a2.bar(names, rl, color="#d35400")
    for b, v in zip(bars, rl, strict=True):
        a2.text(b.get_x() + b.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    a2.set_ylim(0, max(rl + [0.1]) * 1.15)
    a2.set_ylabel("ROUGE-L vs teacher answer")
    for a in (a1, a2):
        a.tick_params(axis="x", labelsize=8)
    fig.suptitle("Attacker student vs teacher (held-out collected prompts)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- HTML
def _e(x: Any) -> str:
    return html.escape(str(x))


def _p(v: Any) -> str:
    """A p-value for people: one that underflowed a double (thousands of watermarked tokens) reads
    as "< 1e-300", not as 0, which no test can give."""
    if v is None:
        return "–"
    return "< 1e-300" if v < 1e-300 else f"{v:.2e}"


def _table(head: list[str], rows: list[list[Any]], raw: bool = False) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#222;line-height:1.45} h1{margin-bottom:4px} h2{border-bottom:2px solid #eee;padding-bottom:4px;
margin-top:34px} table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;
padding:3px 7px;text-align:left;vertical-align:top} th{background:#f5f5f5} tr.att td{background:#fdf0ef}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0}.kpi{border:1px solid #ddd;border-radius:8px;padding:10px 14px;
min-width:160px}.kpi b{display:block;font-size:22px}.kpi span{font-size:12px;color:#666} img{max-width:100%;
border:1px solid #eee} .note{color:#555;font-size:13px} code{background:#f4f4f4;padding:1px 4px}"""


def _attacker_outcomes(m: dict[str, Any]) -> str:
    acts: dict[str, int] = {}
    for a in m["accounts"].values():
        if a.get("label") != 1:
            continue
        for k, v in a["actions"].items():
            acts[f"policy {k}"] = acts.get(f"policy {k}", 0) + v
        for k, v in a["statuses"].items():
            if k != "200":
                acts[f"status {k}"] = acts.get(f"status {k}", 0) + v
    stopped = {k: v for k, v in (m.get("traffic", {}).get("not_sent") or {}).items() if v}
    out = ", ".join(f"{k}: {v}" for k, v in sorted(acts.items()))
    sent = ", ".join(f"{k}: {v}" for k, v in sorted(stopped.items(), key=lambda kv: (-kv[1], kv[0])))
    return out + (f"; planned requests never sent (account stopped after 403, or out of time): {sent}" if stopped else "")


def headline(m: dict[str, Any]) -> dict[str, Any]:
    det = m["detection"]
    y = m["attacker_yield"]
    wm = m.get("watermark", {})
    ra = ((m.get("student") or {}).get("radioactivity") or {}).get("student") or {}
    return {
        "attackers_flagged": f"{det['attackers_flagged']}/{det['attackers']}",
        "benign_flagged": f"{det['benign_flagged']}/{det['benign']}",
        "roc_auc": det["roc"]["auc"],
        "legitimate_impact": m["legitimate_impact"]["share"],
        "attacker_yield_tokens": y["tokens"],
        "attacker_yield_without_defences": round(y["tokens_without_defences"]),
        "yield_reduction": y["reduction"],
        "watermark_p_attacker_texts": (wm.get("attacker") or {}).get("p_value"),
        "radioactivity_p_student": ra.get("p_value"),
        "wall_s": m["timing"]["wall_s"],
    }


def write_report(m: dict[str, Any], topics: dict[str, Any], det: dict[str, Any], out: Path) -> Path:
    labels = {r["account"]: {"label": r["label"]} for r in det["table"]}
    fig_risk(det, labels, out / "risk_over_time.png")
    if topics.get("k"):
        fig_heatmaps(topics, labels, out / "topics.png")
    fig_roc(det["roc"], out / "roc.png")
    fig_yield(m, out / "yield_impact.png")
    has_wm = fig_watermark(m, out / "watermark.png")
    has_q = fig_quality(m, out / "student_quality.png")
    h = headline(m)
    y = m["attacker_yield"]
    imp = m["legitimate_impact"]
    s = m.get("student") or {}
    ra = (s.get("radioactivity") or {}).get("student") or {}

    def kpi(v: str, t: str) -> str:
        return f'<div class="kpi"><b>{_e(v)}</b><span>{_e(t)}</span></div>'

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>DistillGuard arena: {_e(m['scenario'])}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>DistillGuard arena — scenario <code>{_e(m['scenario'])}</code></h1>",
             f"<p class='note'>{_e(m.get('description', ''))}</p>",
             f"<p class='note'>{m['account_counts']['total']} accounts ({m['account_counts']['attacker']} attacker, "
             f"{m['account_counts']['benign']} benign), {m['events']} logged requests over {m['simulated_days']:g} simulated days, "
             f"model {_e(m['gateway']['model'])}, corpora {_e(m['corpora'])}. Real gateway, real `openai` clients, "
             f"real training and audits. Wall time {m['timing']['wall_s']:.0f} s "
             f"(load average at start {m['timing']['load_avg_start'][0]:.1f} on {m['timing']['cpus']} CPUs).</p>",
             "<div class='kpis'>",
             kpi(h["attackers_flagged"], "attacker accounts flagged"),
             kpi(h["benign_flagged"], "benign accounts flagged"),
             kpi("–" if h["roc_auc"] is None else f"{h['roc_auc']:.3f}", "ROC AUC over accounts"),
             kpi(f"{100 * h['legitimate_impact']:.2f}%", "benign requests throttled/degraded/blocked"),
             kpi("–" if not h["yield_reduction"] else f"÷{h['yield_reduction']:.1f}", "attacker yield vs no defence"),
             kpi(_p(h["watermark_p_attacker_texts"]), "watermark p-value, attacker's texts"),
             kpi(_p(h["radioactivity_p_student"]), "radioactivity p-value, attacker's student"),
             "</div>"]

    parts += ["<h2>1. Risk over time</h2>",
              f"<p class='note'>The exported events replayed through <code>detect.online.OnlineDetector</code> (each event "
              f"scored only with the events before it), risk = max(own, linked-cluster risk). Threshold "
              f"{det['threshold']:.2f} ({_e(det.get('threshold_note') or 'calibrated')}); "
              f"triangles mark the moment an account was first flagged. Topic signals: "
              f"{'MiniLM embeddings on' if det['embeddings'] else 'off (CI speed)'}.</p>",
              "<img src='risk_over_time.png'>"]

    rows = []
    for r in sorted(det["table"], key=lambda r: (-(r["label"] or 0), -r["score"])):
        ev = "; ".join(f"{x['signal']} {x['value']:.2f}" for x in r["evidence"][:3])
        acc = m["accounts"].get(r["account"], {})
        rows.append((r["label"], [_e(r["account"]), "attacker" if r["label"] == 1 else "benign", _e(r["persona"]),
                                  acc.get("requests", r["requests"]), f"{r['score']:.3f}", "yes" if r["flagged"] else "",
                                  "" if r["flagged_after_h"] is None else f"{r['flagged_after_h']:.1f} h",
                                  "" if r["requests_before_flag"] is None else r["requests_before_flag"],
                                  _e(r["cluster"] or ""), _e(ev),
                                  _e(", ".join(f"{k}:{v}" for k, v in acc.get("actions", {}).items()))]))
    head = ["account", "truth", "persona", "requests", "risk", "flagged", "flagged after", "requests before flag",
            "cluster", "top evidence", "policy actions"]
    th = "".join(f"<th>{_e(x)}</th>" for x in head)
    body = "".join(f"<tr class='{'att' if lab == 1 else ''}'>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for lab, r in rows)
    parts += ["<h2>2. Detection table</h2>", f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"]

    parts += ["<h2>3. ROC over accounts</h2>",
              "<p class='note'>Each account's peak replayed risk, benign vs attacker (labels known to the arena).</p>",
              "<img src='roc.png' style='max-width:460px'>"]

    clusters = det.get("clusters") or {}
    live = m.get("live", {})
    crow = [[_e(c), _e(", ".join(sorted(mem))),
             _e(", ".join(sorted({str(det_row['persona']) for det_row in det['table'] if det_row['account'] in mem})))]
            for c, mem in sorted(clusters.items())]
    parts += ["<h2>4. Linked account clusters</h2>",
              _table(["cluster", "members", "personas (truth)"], crow, raw=True) if crow else "<p>No accounts were linked.</p>",
              f"<p class='note'>Live gateway (admin API /admin/policy/clusters): "
              f"<code>{_e(str(live.get('clusters'))[:600])}</code></p>"]

    if topics.get("k"):
        parts += ["<h2>5. What each account asked about</h2>",
                  f"<p class='note'>Prompts clustered into {topics['k']} topics (KMeans on {_e(topics['how'])}); each topic is "
                  "named by its top TF-IDF terms.</p>",
                  _table(["topic", "top terms", "requests"], [[f"T{i}", n, topics["sizes"][i]] for i, n in enumerate(topics["names"])]),
                  "<img src='topics.png'>"]

    by_p = y["by_persona"]
    parts += ["<h2>6. Attacker yield and legitimate impact</h2>",
              "<img src='yield_impact.png'>",
              _table(["attacker persona", "accounts", "planned requests", "sent", "answered (200)", "answer tokens",
                      "without defences", "reduction"],
                     [[p, v["accounts"], v["planned"], v["requests"], v["served"], v["tokens"],
                       f"{v.get('tokens_without_defences', 0):,.0f}",
                       "–" if not v.get("reduction") else f"÷{v['reduction']:.1f}"] for p, v in by_p.items()]),
              _table(["what the attacker's requests met", "requests"],
                     [[k, v] for k, v in sorted((y.get("outcomes") or {}).items(), key=lambda kv: -kv[1])]),
              f"<p class='note'><b>Yield</b> = completion tokens of attacker requests answered 200 ({y['tokens']:,}); a "
              f"degraded answer counts with the length it was cut to. "
              f"<b>Without defences</b> is a counterfactual: every request the attacker planned ({y['attacker_planned']}) × the "
              f"mean completion tokens of its requests the policy allowed ({y['mean_tokens_allowed']:.1f}) = "
              f"{y['tokens_without_defences']:,.0f}. {y['degraded_or_throttled']} answered attacker requests were throttled or "
              f"degraded (answer length capped, reasoning withheld, logprobs noised, stronger watermark). The default "
              f"policy tightens before the flag: from risk level 0.6 an account (or its whole linked cluster) has a "
              f"risk budget of requests per hour and per day (429 with Retry-After beyond it; the client waits on its "
              f"simulated clock and retries, then gives up); an account that reaches that level in its first hours "
              f"gets a tighter budget and degraded answers; over the flag line (1.0) an unverified account must "
              f"verify (403: the attacker's account stops), a verified one has its budget shrink with the level. "
              f"Addresses flagged accounts used raise the level of other accounts at once. "
              f"<b>Legitimate impact</b> = benign requests answered 429/403 or with a policy action other than allow: "
              f"{imp['impacted']} of {imp['benign_requests']} ({100 * imp['share']:.2f}%)"
              f"{' ' + _e(imp['by_kind']) if imp['by_kind'] else ''}; "
              f"without defences it is 0 by construction.</p>",
              f"<p class='note'>What the attacker's requests met: {_e(_attacker_outcomes(m))}.</p>"]

    wm = m.get("watermark", {})
    parts += ["<h2>7. Watermark and radioactivity</h2>"]
    if has_wm:
        parts.append("<img src='watermark.png'>")
    scheme = (wm.get("scheme") or {}).get("scheme", "?")
    parts.append(f"<p class='note'>Every answer the gateway served carried its keyed watermark (scheme {_e(scheme)}, key "
                 f"generated for this run). Pooled over the {wm.get('attacker_texts', 0)} answers the attacker collected: p = "
                 f"{_p((wm.get('attacker') or {}).get('p_value'))} under the gateway's key, p = "
                 f"{_p((wm.get('attacker_random_key') or {}).get('p_value'))} under a random key. "
                 + (f"Radioactivity audit (open weights, reading mode: the student reads unwatermarked answers to the attacker's "
                    f"prompts) of the attacker's trained student: p = {_p(ra.get('p_value'))} "
                    f"over {ra.get('tuples_scored')} scored tuples; the same student before training (reference): p = "
                    f"{_p((ra.get('control') or {}).get('reference_model', {}).get('p_value'))}; random keys: "
                    f"{', '.join(_p(p) for p in (ra.get('control') or {}).get('random_key_p_values', []))}. "
                    if ra else "No radioactivity audit ran. ")
                 + ("A control student trained on unwatermarked answers was audited too." if (s.get('radioactivity') or {}).get('control_student')
                    else "No control student trained on unwatermarked teacher answers in this scenario (time budget).")
                 + "</p>")

    parts += ["<h2>8. The attacker's student</h2>"]
    if has_q:
        q = s["quality"]
        parts += ["<img src='student_quality.png'>",
                  _table(["model", "params", "perplexity", "top-1 agreement", "KL to teacher", "ROUGE-L"],
                         [[r["name"], f"{(r.get('params') or 0) / 1e6:.1f}M", f"{r['perplexity']:.2f}" if r.get("perplexity") else "–",
                           f"{r['top1_agreement']:.3f}" if r.get("top1_agreement") is not None else "–",
                           f"{r['kl']:.3f}" if r.get("kl") is not None else "–",
                           f"{r['rouge_l']:.3f}" if r.get("rouge_l") is not None else "–"] for r in q["models"]]),
                  f"<p class='note'>Held-out collected prompts ({q.get('heldout_prompts_scored')} scored teacher-forced, "
                  f"{q.get('heldout_prompts_generated')} answered greedily). Student trained "
                  f"{(s.get('train') or {}).get('steps')} steps (sequence-level KD on {(s.get('train') or {}).get('examples')} "
                  f"answers); its initialisation keeps evenly spaced layers of the served model (an open base model "
                  f"stand-in). The reference for perplexity and ROUGE-L is the answer the attacker received (sampled, "
                  f"watermarked), so even the teacher's own greedy answer scores below 1.</p>"]
    else:
        parts.append(f"<p>{_e(s.get('skipped') or (s.get('quality') or {}).get('error') or 'not measured')}</p>")

    st = m["timing"]["stages_s"]
    parts += ["<h2>Run</h2>", _table(["stage", "seconds"], [[k, v] for k, v in st.items()]),
              f"<p class='note'>Files: metrics.json, events.jsonl (the gateway's exchange log), labels.json, client_log.jsonl, "
              f"server.toml, server.log, attacker/collected.jsonl.</p></body></html>"]
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
