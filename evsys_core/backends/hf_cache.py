"""The default model's tokenizer in the Hugging Face cache layout, so that code loading it by
hub id (`AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")`, as
tinker-cookbook does) finds it without a network.

    $HF_HUB_CACHE/models--HuggingFaceTB--SmolLM2-135M-Instruct/
        refs/main                    the snapshot id below
        snapshots/<id>/              config.json, tokenizer files, chat template (no weights)
        .evsys-materialised          marks the entry as evsys's

The cache root is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. An entry
evsys did not write (a real download) is never touched. The snapshot id is a digest of the
files, so writing them again is a no-op. The weights stay in evsys's own cache:
`resolve_local_model` skips a marked entry and loads the default model from there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from evsys_core.backends.models import (DEFAULT_HUB_ID, DEFAULT_MODEL, MATERIALISED_MARKER, ensure_converted,
                                        hf_hub_cache, resolve_local_model)

FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def repo_dir(hub_id: str = DEFAULT_HUB_ID) -> Path:
    return hf_hub_cache() / ("models--" + hub_id.replace("/", "--"))


def materialise_default_tokenizer() -> Path | None:
    """The snapshot directory holding the default model's tokenizer under its hub id, written
    if needed; None when a real cache entry for that id exists (left as it is)."""
    repo = repo_dir()
    if repo.exists() and not (repo / MATERIALISED_MARKER).is_file():
        return None
    src = ensure_converted(resolve_local_model(DEFAULT_MODEL))
    files = [f for f in FILES if (src / f).is_file()]
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.encode() + b"\0" + (src / f).read_bytes())
    snap_id = digest.hexdigest()
    snap = repo / "snapshots" / snap_id
    ref = repo / "refs" / "main"
    if snap.is_dir() and ref.is_file() and ref.read_text().strip() == snap_id:
        return snap
    (repo / "snapshots").mkdir(parents=True, exist_ok=True)
    (repo / MATERIALISED_MARKER).write_text(f"written by evsys from {src}; safe to delete\n")
    if not snap.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=repo / "snapshots"))
        try:
            for f in files:
                shutil.copyfile(src / f, tmp / f)
            os.chmod(tmp, 0o755)
            try:
                tmp.rename(snap)
            except OSError:
                if not snap.is_dir():  # not a concurrent writer that won: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp_ref = ref.with_name(f".main.tmp-{os.getpid()}")
    tmp_ref.write_text(snap_id)
    tmp_ref.replace(ref)
    return snap
