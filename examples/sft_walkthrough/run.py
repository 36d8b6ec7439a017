"""Run the SFT walkthrough: `python examples/sft_walkthrough/run.py [--set KEY=VALUE ...]`.

Runs from the repository root (the config's paths are relative to it). Extra arguments are
config overrides, e.g. `--set algorithm.params.max_steps=20`; `--tinker` uses config.tinker.yaml.
"""

import argparse
import sys
from pathlib import Path

import evsys_core

here = Path(__file__).resolve().parent
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
parser.add_argument("--tinker", action="store_true", help="use config.tinker.yaml (needs TINKER_API_KEY)")
args = parser.parse_args()

config = here / ("config.tinker.yaml" if args.tinker else "config.yaml")
result = evsys_core.run(config, args.overrides, workspace=here.parent.parent)
sys.exit(0 if result.status == "completed" else 1)
