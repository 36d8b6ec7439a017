"""`evsys tinker-local`: run an unmodified Tinker program on this machine.

    evsys tinker-local -m tinker_cookbook.recipes.sl_loop model_name=HuggingFaceTB/SmolLM2-135M-Instruct ...
    evsys tinker-local my_tinker_script.py --its-own args

Like `python -m MODULE` / `python SCRIPT`, after `install()`:
- `tinker.ServiceClient` becomes `LocalServiceClient` (backends/service.py), so every client
  the program makes trains and samples here, on PyTorch;
- the default model's tokenizer is written once into the Hugging Face cache under its hub id
  (backends/hf_cache.py), so `AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")`
  works without a network;
- when tinker-cookbook is installed, its model table (`model_info.get_model_attributes`)
  answers for the models held locally that it does not list, with a renderer that fits the
  model's chat template (ChatML: `qwen3_instruct`; otherwise `role_colon`). Models it lists
  are untouched.
Nothing else of the program is changed; see docs/tinker-local.md.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Any

from evsys_core.errors import UsageError

CHATML_RENDERER = "qwen3_instruct"
FALLBACK_RENDERER = "role_colon"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tinker-local", help="run an unmodified Tinker program (a script or -m MODULE) on the local backend",
        description="Run a program written for Tinker with tinker.ServiceClient served on this machine. "
                    "Arguments after the script or module go to the program (put `--` before ones that "
                    "start with a dash).")
    p.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as `python -m MODULE`")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the local engine runs (default: a GPU if PyTorch sees one)")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="where checkpoints saved by name go (default: $EVSYS_CHECKPOINT_DIR, else "
                        "~/.cache/evsys/checkpoints); one folder per process under it")
    p.add_argument("program", nargs=argparse.REMAINDER, help="SCRIPT [ARGS...], or the module's ARGS")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    program = [a for a in args.program]
    if program[:1] == ["--"]:
        program = program[1:]
    if args.module is None and not program:
        raise UsageError("give a script (evsys tinker-local script.py ...) or a module (-m MODULE ...)")
    if args.module is None and not Path(program[0]).is_file():
        raise UsageError(f"script {program[0]!r} not found (to run a module, use -m {program[0]})")
    install(device=args.device, checkpoint_dir=args.checkpoint_dir)
    try:
        if args.module is not None:
            sys.argv = [args.module, *program]
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = program
            sys.path.insert(0, str(Path(program[0]).resolve().parent))
            runpy.run_path(program[0], run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def install(*, device: str = "auto", checkpoint_dir: str | None = None) -> type:
    """Make `tinker.ServiceClient` the local one (returned); see the module docstring."""
    import tinker

    from evsys_core.backends.hf_cache import materialise_default_tokenizer
    from evsys_core.backends.service import LocalServiceClient

    class ServiceClient(LocalServiceClient):
        __doc__ = LocalServiceClient.__doc__

        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.setdefault("device", device)
            kwargs.setdefault("checkpoint_dir", checkpoint_dir)
            super().__init__(*args, **kwargs)

    try:
        materialise_default_tokenizer()
    except Exception as e:  # the default model is not installed: programs naming others still run
        print(f"evsys tinker-local: the default model's tokenizer is not in the hub cache ({e})",
              file=sys.stderr)
    tinker.ServiceClient = ServiceClient
    _teach_cookbook_models()
    return ServiceClient


def local_renderer_name(model_name: str) -> str | None:
    """The cookbook renderer for a locally held model (None if it is not held here)."""
    from evsys_core.backends.models import ensure_converted, resolve_local_model
    from evsys_core.errors import ModelNotFoundError

    try:
        path = ensure_converted(resolve_local_model(model_name))
    except (ModelNotFoundError, OSError):
        return None
    template = ""
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(errors="replace")
    elif (path / "tokenizer_config.json").is_file():
        try:
            template = str(json.loads((path / "tokenizer_config.json").read_text()).get("chat_template") or "")
        except ValueError:
            template = ""
    return CHATML_RENDERER if "<|im_start|>" in template else FALLBACK_RENDERER


def _teach_cookbook_models() -> None:
    try:
        from tinker_cookbook import model_info
    except ImportError:
        return
    if getattr(model_info.get_model_attributes, "evsys_local", False):
        return
    original = model_info.get_model_attributes

    def get_model_attributes(model_name: str) -> Any:
        try:
            return original(model_name)
        except (model_info.ConfigurationError, KeyError, ValueError):
            renderer = local_renderer_name(model_name.split(":", 1)[0])
            if renderer is None:
                raise
        org, _, version = model_name.rpartition("/")
        return model_info.ModelAttributes(organization=org or "local", version_str=version, size_str="local",
                                          is_chat=True, recommended_renderers=(renderer,))

    get_model_attributes.evsys_local = True  # type: ignore[attr-defined]
    model_info.get_model_attributes = get_model_attributes
