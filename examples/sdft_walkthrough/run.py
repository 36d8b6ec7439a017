"""The SDFT walkthrough: `python examples/sdft_walkthrough/run.py [--tinker] [evsys run options]`.

Runs config.yaml (local backend, default model) or, with --tinker, config.tinker.yaml (needs
TINKER_API_KEY); --demo trains and scores on the first rows of the data only (data/demo/: a
two-minute run on a CPU); other arguments go to `evsys run`, e.g. --set algorithm.params.max_steps=20.
"""
import sys
from pathlib import Path

from evsys_core.cli import main

here, args = Path(__file__).resolve().parent, sys.argv[1:]
config = here / ("config.tinker.yaml" if "--tinker" in args else "config.yaml")
demo = "examples/sdft_walkthrough/data/demo"
small = ["--set", f"data.path={demo}/train.jsonl", "--set", f"metadata.benchmark.0.path={demo}/val"]
small += [] if "--tinker" in args else ["--set", f"metadata.benchmark.1.path={demo}/seen"]  # local only
small = small if "--demo" in args else []
sys.exit(main(["run", str(config), "--workspace", str(here.parents[1]), *small,
               *(a for a in args if a not in ("--tinker", "--demo"))]))
