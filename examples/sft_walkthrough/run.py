"""The SFT walkthrough: `python examples/sft_walkthrough/run.py [--tinker] [evsys run options]`.

Runs config.yaml (local backend, default model) or, with --tinker, config.tinker.yaml (needs
TINKER_API_KEY); other arguments go to `evsys run`, e.g. --set algorithm.params.max_steps=20.
"""
import sys
from pathlib import Path

from evsys_core.cli import main

here, args = Path(__file__).resolve().parent, sys.argv[1:]
config = here / ("config.tinker.yaml" if "--tinker" in args else "config.yaml")
sys.exit(main(["run", str(config), "--workspace", str(here.parents[1]), *(a for a in args if a != "--tinker")]))
