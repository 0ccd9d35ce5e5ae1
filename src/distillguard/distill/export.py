"""`distill export`: a student as a transformers folder (safetensors) and a GGUF file for llama.cpp.

The GGUF is written with the `gguf` package (llama.cpp's convert script is not shipped in any
installed package). Llama-family models only: that is what layer-copied students of SmolLM2 are.
Two details decide whether llama.cpp reads the file right:
- Q and K projections are stored with llama.cpp's rotary layout (interleaved pairs), which is
  the inverse of the permutation transformers undoes when it loads a GGUF;
- the tokenizer goes in as token list + BPE merges + token types, with the pre-tokenizer name
  (``tokenizer.ggml.pre``) taken from the source GGUF when there is one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.distill.modelio import load_model


class ExportError(ValueError):
    pass


@dataclass
class ExportSummary:
    hf_dir: Path
    gguf_path: Path
    tensors: int
    gguf_bytes: int


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half layout -> llama.cpp interleaved layout (as llama.cpp's convert script does)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf_name: str) -> str | None:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    if len(parts) >= 5 and parts[0] == "model" and parts[1] == "layers":
        inner = ".".join(parts[3:-1])
        if inner in _NAMES:
            return f"blk.{parts[2]}.{_NAMES[inner]}.{parts[-1]}"
    return None


def _tokenizer_pre(source: str | None) -> str:
    """The pre-tokenizer id llama.cpp uses for BPE; copied from a source GGUF when known."""
    if source and source.endswith(".gguf") and Path(source).is_file():
        from gguf import GGUFReader

        f = GGUFReader(source).fields.get("tokenizer.ggml.pre")
        if f is not None:
            return str(f.contents())
    return "default"


def write_gguf(model: Any, tok: Any, hf_dir: Path, path: Path, dtype: str = "f16", source: str | None = None) -> int:
    import gguf
    import torch

    cfg = model.config
    if cfg.model_type != "llama":
        raise ExportError(f"GGUF export supports llama-architecture models; this one is {cfg.model_type!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    w.add_name(path.stem)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(n_head))
    w.add_head_count_kv(int(n_kv))
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(int(head_dim))
    w.add_vocab_size(int(cfg.vocab_size))
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[dtype]
    w.add_file_type(int(ftype))

    # Tokenizer: every id's token string (byte-level BPE form), its type, and the merges.
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    n_vocab = int(cfg.vocab_size)
    special = set(tok.all_special_tokens) | {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special}
    tokens, types = [], []
    for i in range(n_vocab):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_tokenizer_pre(source))
    w.add_token_list(tokens)
    w.add_token_types(types)
    special_vocab = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=n_vocab)
    if not special_vocab.merges:
        raise ExportError(f"no BPE merges found in {hf_dir}/tokenizer.json; GGUF export needs a BPE tokenizer")
    special_vocab.add_to_gguf(w, quiet=True)
    if getattr(tok, "chat_template", None) and special_vocab.chat_template is None:
        w.add_chat_template(tok.chat_template)
    w.add_add_bos_token(False)

    n = 0
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        gname = gguf_name(name)
        if gname is None:
            raise ExportError(f"no GGUF name for tensor {name!r}; only plain llama models are supported")
        arr = t.detach().to(torch.float32).numpy()
        if gname.endswith("attn_q.weight"):
            arr = permute_qk(arr, n_head)
        elif gname.endswith("attn_k.weight"):
            arr = permute_qk(arr, n_kv)
        if arr.ndim == 1 or dtype == "f32":
            w.add_tensor(gname, arr.astype(np.float32))
        elif dtype == "f16":
            w.add_tensor(gname, arr.astype(np.float16))
        else:
            q = gguf.GGMLQuantizationType.Q8_0
            if dtype == "q4_1" and gname != "token_embd.weight":  # as in SmolLM2's own Q4_1 file
                q = gguf.GGMLQuantizationType.Q4_1
            w.add_tensor(gname, gguf.quants.quantize(arr, q), raw_dtype=q)
        n += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return n


def export(model_path: Path, out_dir: Path, dtype: str = "f16") -> ExportSummary:
    model, tok = load_model(model_path)
    hf_dir = out_dir / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf_dir, safe_serialization=True)
    tok.save_pretrained(hf_dir)
    source = None
    meta = Path(model_path) / "distill_student.json"
    if not meta.is_file():
        for parent in [Path(model_path), *Path(model_path).parents][:4]:
            cand = parent / "student-init" / "distill_student.json"
            if cand.is_file():
                meta = cand
                break
    if meta.is_file():
        source = json.loads(meta.read_text()).get("source")
    gguf_path = out_dir / f"{Path(model_path).name}.{dtype}.gguf"
    n = write_gguf(model, tok, hf_dir, gguf_path, dtype, source)
    return ExportSummary(hf_dir, gguf_path, n, gguf_path.stat().st_size)
