"""tinker-cookbook's sl_loop recipe, unmodified, on a few local chat rows (no hub access here).

    evsys tinker-local docs/sl_loop_local_rows.py model_name=HuggingFaceTB/SmolLM2-135M-Instruct ...
"""

import runpy
import sys

import datasets

ROWS = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(8)]

datasets.load_dataset = lambda *a, **k: datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
sys.argv = ["sl_loop", *sys.argv[1:]]
runpy.run_module("tinker_cookbook.recipes.sl_loop", run_name="__main__")
