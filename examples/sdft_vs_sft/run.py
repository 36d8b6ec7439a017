"""Does SDFT forget less than SFT? `python examples/sdft_vs_sft/run.py [--quick] [--seeds 0,1,2] [--ablate]`.

Full run: for each method (SFT on the bare answer, SFT on a sentence, SDFT) pick the learning
rate on the validation split (one seed per grid value; the rate with the best mean of the
new-skill validation score and the prior-skill validation score wins), then train each method
with its rate under every seed, evaluating the new skill and the two prior skills at several
steps. `--quick` (1 seed, data/quick/, fewer steps, no rate search: the rates in the arm
configs) is the smoke test. `--ablate` trains only the SDFT arm, with its defaults and with
each reference implementation's choice that evsys does not make by default (docs/sdft.md),
and compares each with the default by `evsys compare`. Everything goes through `evsys run` and evsys's index and stats;
the report (report.md, results.json, curves_*.png, tradeoff.png) lands in --out (default
examples/sdft_vs_sft/outputs/<mode>-<time>/), which is also the runs' workspace: its own index,
its own run names.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from evsys_core import stats
from evsys_core.cli import main as evsys
from evsys_core.history.index import open_index
from evsys_core.plotting import Panel, available, draw

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WS = REPO  # the workspace of the runs being read (main sets it to --out)
ARMS = ("sft_bare", "sft_sentence", "sdft")
NEW, PRIOR = ("new_seen", "new_para"), ("retention", "continent")
BENCHES = NEW + PRIOR                      # the arm configs' benchmark order
VAL = ("new_seen", "val_new", "val_retention", "val_continent")  # the same slots
PLANS = {
    "full": {"data": "data", "seeds": "0,1,2", "steps": 40, "every_new": 10, "every_prior": 20,
             "grid": (3.0e-4, 1.0e-3)},
    "quick": {"data": "data/quick", "seeds": "0", "steps": 8, "every_new": 4, "every_prior": 8,
              "grid": ()},
}

# docs/sdft.md, "Remaining differences": each reference choice evsys does not make by default,
# as the SDFT arm's parameters. Full-vocabulary distillation (topk 49152) is left out: 5.5 s per
# 8 tokens to build its targets on this CPU.
REFERENCE_TEMPLATE = ("{prompt}\n\nThis is an example for a response to the question:\n{expected}\n\n"
                      "Now answer with a response of your own, including the thinking process.")
ABLATIONS = {
    "demo_template": {"demo_template": REFERENCE_TEMPLATE},
    "skip_first_tokens": {"skip_first_tokens": 3},
    "sequence_mean": {"loss_reduction": "sequence_mean"},
    "ema_teacher": {"teacher": "ema", "ema_rate": 0.01},
}
FIELDS = ("base", "cand", "delta", "ci_low", "ci_high", "p_value", "test", "n_tasks", "verdict")


def overrides(plan: dict, out: Path, benches: tuple[str, ...], every: tuple, lr: float | None,
              arm: str) -> list[str]:
    data = HERE / plan["data"]
    sets = [f"model.name={plan['model']}"] if plan.get("model") else []
    sets += [f"data.path={data}/train.{arm}.jsonl", f"algorithm.params.max_steps={plan['steps']}",
            f"callbacks.0.params.output_dir={out / 'runs'}"]
    for i, (name, e) in enumerate(zip(benches, every)):
        sets += [f"metadata.benchmark.{i}.name={name}", f"metadata.benchmark.{i}.path={data}/{name}",
                 f"metadata.benchmark.{i}.run_every={e}"]
        if arm != ARMS[0]:  # the untrained model is scored once, by the first arm's runs
            sets.append(f"metadata.benchmark.{i}.at_start=false")
    if lr is not None:
        sets.append(f"algorithm.params.learning_rate={lr}")
    return [a for s in sets for a in ("--set", s)]


def train(arm: str, name: str, seeds: str, sets: list[str], out: Path, config: str) -> None:
    rc = evsys(["run", str(HERE / config.format(arm=arm)), "--seeds", seeds, "--run-name", name,
                "--workspace", str(out), *sets])
    if rc != 0:
        raise SystemExit(f"evsys run {arm}.yaml ({name}) failed with exit {rc}")


def group_runs(idx, name: str) -> list[dict]:
    g = idx.group(name)
    if g is None or not g["runs"]:
        raise SystemExit(f"no replicate group {name!r} in the index")
    return g["runs"]


def predictions(run: dict, bench: str) -> list[dict]:
    """The run's prediction rows of one benchmark (predictions/<bench>.jsonl, every step)."""
    path = WS / run["path"] / "predictions" / f"{bench}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def per_task(runs: list[dict], bench: str, step: int | str) -> dict[str, list[float]]:
    """task_id -> pass@1 (greedy: passed) per replicate, at `step` ("final": each run's last)."""
    out: dict[str, list[float]] = {}
    for run in runs:
        rows = predictions(run, bench)
        at = max(r["step"] for r in rows) if step == "final" else step
        for r in rows:
            if r["step"] == at:
                out.setdefault(r["task_id"], []).append(float(r["passed"]))
    return out


def summary(scores: dict[str, list[float]]) -> dict:
    """Mean ± 95% CI over tasks, each task's value the mean over seeds."""
    vals = [sum(v) / len(v) for v in scores.values()]
    mean, se = stats.mean_stderr(vals)
    low, high = stats.ci95(mean, se)
    return {"mean": mean, "stderr": se, "ci95": [low, high], "n_tasks": len(vals),
            "n_seeds": max(map(len, scores.values())), "shown": stats.format_score(mean, se, len(vals))}


def pooled(groups: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Several benchmarks' per-task scores as one (the prior-skill average, tasks pooled)."""
    return {f"{i}:{t}": v for i, g in enumerate(groups) for t, v in g.items()}


def compare_groups(out: Path, base: str, cand: str) -> dict[str, dict]:
    """`evsys compare BASE CAND --json` of two replicate groups: metric key -> its entry."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = evsys(["compare", base, cand, "--json", "--workspace", str(out)])
    if rc != 0:
        raise SystemExit(f"evsys compare {base} {cand} failed with exit {rc}")
    return {m["key"]: m for m in json.loads(buf.getvalue())["metrics"]}


def select_lr(plan: dict, out: Path, config: str) -> tuple[dict, list]:
    """Per method, the grid rate with the best validation score (new and prior weighted equally)."""
    chosen, rows = {}, []
    for arm in ARMS:
        best = None
        for lr in plan["grid"]:
            name = f"select_{arm}_lr{lr:g}"
            # validation benchmarks scored once, after training (run_every null)
            train(arm, name, "0", overrides(plan, out, VAL, ("null",) * len(VAL), lr, arm), out, config)
            runs = group_runs(open_index(out), name)
            new = summary(per_task(runs, "val_new", "final"))["mean"]
            prior = summary(pooled([per_task(runs, b, "final") for b in VAL[2:]]))["mean"]
            score = (new + prior) / 2
            rows.append({"arm": arm, "lr": lr, "val_new": new, "val_prior": prior, "score": score})
            if best is None or score > best[0]:
                best = (score, lr)
        chosen[arm] = best[1]
    return chosen, rows


def curves(runs: list[dict], bench: str) -> list[tuple[int, float]]:
    by_step: dict[int, dict[str, list[float]]] = {}
    for run in runs:
        for r in predictions(run, bench):
            by_step.setdefault(r["step"], {}).setdefault(r["task_id"], []).append(float(r["passed"]))
    return [(s, summary(t)["mean"]) for s, t in sorted(by_step.items())]


def truncation(runs: list[dict], bench: str, step: int | str) -> dict:
    rows = [r for run in runs for r in predictions(run, bench)]
    at = max(r["step"] for r in rows) if step == "final" else step
    hit = [r for r in rows if r["step"] == at]
    return {"truncated": sum(bool(r.get("truncated")) for r in hit), "answers": len(hit),
            "mean_chars": round(sum(len(r["answer"]) for r in hit) / max(len(hit), 1), 1)}


def train_metric(runs: list[dict], key: str, step: int | str = 0) -> float | None:
    vals = []
    for run in runs:
        rows = [json.loads(x) for x in (WS / run["path"] / "metrics.jsonl").read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["split"] == "train" and key in r["metrics"]]
        if rows:
            vals.append((rows[-1] if step == "final" else next((r for r in rows if r["step"] == step), rows[0]))["metrics"][key])
    return sum(vals) / len(vals) if vals else None


def report(mode: str, plan: dict, chosen: dict, select_rows: list, walls: dict, out: Path) -> dict:
    idx = open_index(out)
    groups = {arm: group_runs(idx, arm) for arm in ARMS}
    final = {arm: {b: per_task(groups[arm], b, "final") for b in BENCHES} for arm in ARMS}
    base = {b: per_task(groups["sft_bare"], b, 0) for b in BENCHES}  # step 0: every arm's start
    table = [{"arm": "base", **{b: summary(base[b]) for b in BENCHES},
              "prior_avg": summary(pooled([base[b] for b in PRIOR]))}]
    for arm in ARMS:
        table.append({"arm": arm, "lr": chosen[arm], **{b: summary(final[arm][b]) for b in BENCHES},
                      "prior_avg": summary(pooled([final[arm][b] for b in PRIOR]))})
    verdicts = []
    pairs = [("sft_bare", "sdft"), ("sft_sentence", "sdft"), ("sft_bare", "sft_sentence")]
    for lo, hi in pairs:  # group against group at their final evaluations: `evsys compare`
        metrics = compare_groups(out, lo, hi)
        for b in BENCHES:
            m = metrics[f"val/{b}/pass@1"]
            verdicts.append({"benchmark": b, "base_arm": lo, "cand_arm": hi, "by": "evsys compare",
                             **{k: m[k] for k in FIELDS}})
    # against the start (step 0 of the same runs) and on the pooled prior tasks: evsys compare
    # pairs two sides at one step, so these use its test (stats.paired_compare) directly
    for b in (*BENCHES, "prior_avg"):
        side = {arm: (pooled([final[arm][p] for p in PRIOR]) if b == "prior_avg" else final[arm][b]) for arm in ARMS}
        side["base"] = pooled([base[p] for p in PRIOR]) if b == "prior_avg" else base[b]
        for lo, hi in ([("base", arm) for arm in ARMS] + (pairs if b == "prior_avg" else [])):
            p = stats.paired_compare(side[lo], side[hi]).as_dict()
            verdicts.append({"benchmark": b, "base_arm": lo, "cand_arm": hi, "by": "stats.paired_compare",
                             **{k: p[k] for k in FIELDS}})
    trunc = {b: {"base": truncation(groups["sft_bare"], b, 0),
                 **{arm: truncation(groups[arm], b, "final") for arm in ARMS}} for b in BENCHES}
    ceiling = {k: train_metric(groups["sdft"], f"train/{k}") for k in ("teacher_pass@1", "student_pass@1")}
    sdft_train = {k: train_metric(groups["sdft"], f"train/{k}", "final")
                  for k in ("kl", "teacher_top1_agree", "completion_len", "mean_loss")}
    voice = {arm: sum("answer to this question" in r["answer"].lower()
                      for run in groups[arm] for r in predictions(run, "new_para") if r["step"] == plan["steps"])
             for arm in ARMS}
    curve = {arm: {b: curves(groups[arm], b) for b in BENCHES} for arm in ARMS}
    for arm in ARMS[1:]:  # every arm starts from the base model the first arm scored at step 0
        for b in BENCHES:
            if curve[arm][b][:1] != curve[ARMS[0]][b][:1]:
                curve[arm][b] = curve[ARMS[0]][b][:1] + curve[arm][b]
    result = {"mode": mode, "plan": {k: v for k, v in plan.items()}, "seeds": plan["seeds"], "lr": chosen,
              "lr_selection": select_rows, "table": table, "verdicts": verdicts, "truncation": trunc,
              "teacher_ceiling": ceiling, "sdft_final_train": sdft_train, "teacher_voice_new_para": voice,
              "curves": curve, "wall_s": walls,
              "groups": {arm: [r["name"] for r in groups[arm]] for arm in ARMS}}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(markdown(result))
    if available():
        for b in BENCHES:
            draw([Panel(b, [(arm, curve[arm][b]) for arm in ARMS], ylabel="pass@1")], out=out / f"curves_{b}.png")
        trade = []
        for arm in ARMS:
            new = dict(curve[arm]["new_para"])
            prior = [dict(curve[arm][p]) for p in PRIOR]
            steps = [s for s in sorted(new) if all(s in p for p in prior)]
            trade.append((arm, [(new[s], sum(p[s] for p in prior) / len(prior)) for s in steps]))
        draw([Panel("new vs prior (one point per checkpoint)", trade, ylabel="prior-skill pass@1 (mean of 2)",
                    xlabel="new-skill pass@1 (held-out paraphrases)")], out=out / "tradeoff.png")
    return result


def cell(s: dict) -> str:
    """A table cell of `summary()`: mean ± the 95% half-width (the same as stats.format_score)."""
    return f"{s['mean']:.3f} ± {stats.Z95 * s['stderr']:.3f}"


def markdown(r: dict) -> str:
    cols = (*BENCHES, "prior_avg")
    lines = [f"# SDFT vs SFT ({r['mode']} run, seeds {r['seeds']}, {r['plan']['steps']} steps)", "",
             "pass@1, mean ± 95% CI over tasks (each task averaged over seeds)", "",
             "| arm | lr | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for row in r["table"]:
        lr = f"{row['lr']:g}" if "lr" in row else "-"
        lines.append(f"| {row['arm']} | {lr} | " + " | ".join(
            cell(row[c]) for c in cols) + " |")
    lines += ["", "Paired verdicts (CAND − BASE over tasks, seeds pooled per task):", "",
              "| benchmark | base | cand | delta | 95% CI | p | verdict | by |", "|---|---|---|---|---|---|---|---|"]
    for v in r["verdicts"]:
        lines.append(f"| {v['benchmark']} | {v['base_arm']} | {v['cand_arm']} | {v['delta']:+.3f} | "
                     f"[{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] | {v['p_value']:.3g} | {v['verdict']} | {v['by']} |")
    c = r["teacher_ceiling"]
    lines += ["", f"Teacher's ceiling on the training prompts (step 0, SDFT runs): teacher "
              f"{c['teacher_pass@1']}, student {c['student_pass@1']}",
              f"SDFT at the last step: {json.dumps(r['sdft_final_train'])}",
              f"new_para answers in the teacher's voice (\"The answer to this question is ...\"): "
              f"{json.dumps(r['teacher_voice_new_para'])}", "", "Answers that hit max_tokens (truncated / answers):", ""]
    for b, t in r["truncation"].items():
        lines.append(f"- {b}: " + ", ".join(f"{arm} {x['truncated']}/{x['answers']} (mean {x['mean_chars']} chars)"
                                             for arm, x in t.items()))
    if r["lr_selection"]:
        lines += ["", "Learning rate selection (validation split, seed 0): "]
        lines += [f"- {s['arm']} lr {s['lr']:g}: val_new {s['val_new']:.3f}, val_prior {s['val_prior']:.3f}, "
                  f"score {s['score']:.3f}" for s in r["lr_selection"]]
    lines += ["", "Wall time (s): " + json.dumps({k: round(v) for k, v in r["wall_s"].items()}), ""]
    return "\n".join(lines)


def ablate(mode: str, plan: dict, config: str, out: Path) -> dict:
    """The SDFT arm as configured and with each of ABLATIONS, under the plan's seeds, steps and
    the arm config's rate; every benchmark scored once, at the last step."""
    every = (plan["steps"],) * len(BENCHES)
    walls, t0 = {}, time.monotonic()
    for name, params in {"default": {}, **ABLATIONS}.items():
        group = "sdft" if name == "default" else f"sdft_{name}"
        sets = overrides(plan, out, BENCHES, every, None, "sdft")
        sets += [a for k, v in params.items() for a in ("--set", f"algorithm.params.{k}={json.dumps(v)}")]
        t = time.monotonic()
        train("sdft", group, plan["seeds"], sets, out, config)
        walls[group] = time.monotonic() - t
    walls["total"] = time.monotonic() - t0
    return ablation_report(mode, plan, list(ABLATIONS), walls, out)


def ablation_report(mode: str, plan: dict, names: list[str], walls: dict, out: Path) -> dict:
    """Each ablation group against the default SDFT group: scores, the teacher's ceiling, and
    `evsys compare`'s paired verdict per benchmark (ablations.json, ablations.md)."""
    idx = open_index(out)
    rows = []
    for group in ["sdft", *(f"sdft_{n}" for n in names)]:
        runs = group_runs(idx, group)
        row = {"group": group, "params": ABLATIONS.get(group.removeprefix("sdft_"), {}),
               "ceiling": {k: train_metric(runs, f"train/{k}") for k in ("teacher_pass@1", "student_pass@1")},
               **{b: summary(per_task(runs, b, "final")) for b in BENCHES}}
        if group != "sdft":
            metrics = compare_groups(out, "sdft", group)
            row["vs_default"] = {b: {k: metrics[f"val/{b}/pass@1"][k] for k in FIELDS} for b in BENCHES}
        rows.append(row)
    result = {"mode": mode, "seeds": plan["seeds"], "steps": plan["steps"], "rows": rows, "wall_s": walls}
    (out / "ablations.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# SDFT's reference settings, one at a time ({mode} data, seeds {plan['seeds']}, "
             f"{plan['steps']} steps)", "", "pass@1 at the last step, mean ± 95% CI over tasks (each task "
             "averaged over seeds); teacher / student: the step-0 ceiling on the training prompts", "",
             "| group | teacher / student | " + " | ".join(BENCHES) + " |", "|---" * (len(BENCHES) + 2) + "|"]
    for r in rows:
        c = r["ceiling"]
        ceil = " / ".join("-" if c[k] is None else f"{c[k]:.3f}" for k in ("teacher_pass@1", "student_pass@1"))
        lines.append(f"| {r['group']} | {ceil} | " + " | ".join(
            cell(r[b]) for b in BENCHES) + " |")
    lines += ["", "Paired against the default SDFT group (`evsys compare sdft GROUP`):", "",
              "| group | benchmark | delta | 95% CI | p | tasks | verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows[1:]:
        for b, v in r["vs_default"].items():
            lines.append(f"| {r['group']} | {b} | {v['delta']:+.3f} | [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] | "
                         f"{v['p_value']:.3g} | {v['n_tasks']} | {v['verdict']} |")
    lines += ["", "Wall time (s): " + json.dumps({k: round(v) for k, v in walls.items()}), ""]
    (out / "ablations.md").write_text("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, small benchmarks, no rate search")
    ap.add_argument("--seeds", help="override the plan's seeds, e.g. 0,1,2")
    ap.add_argument("--tinker", action="store_true", help="the *.tinker.yaml configs (needs TINKER_API_KEY)")
    ap.add_argument("--out", type=Path, help="a new folder for the runs and the report")
    ap.add_argument("--model", help="another model for every arm (a local directory, a .gguf, a name)")
    ap.add_argument("--ablate", action="store_true",
                    help="only the SDFT arm: its defaults against each reference setting (docs/sdft.md)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = dict(PLANS[mode], model=args.model, **({"seeds": args.seeds} if args.seeds else {}))
    config = "{arm}.tinker.yaml" if args.tinker else "{arm}.yaml"
    stamp = f"{mode}{'-ablate' if args.ablate else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = (args.out or HERE / "outputs" / stamp).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {out} is not empty: pass a new folder (a study never writes over another)")
    out.mkdir(parents=True, exist_ok=True)
    global WS
    WS = out
    if args.ablate:
        ablate(mode, plan, config, out)
        print((out / "ablations.md").read_text())
        print(f"report: {out}/ablations.md")
        return 0
    walls, t0 = {}, time.monotonic()
    chosen, select_rows = {}, []
    if plan["grid"]:
        chosen, select_rows = select_lr(plan, out, config)
        walls["lr_selection"] = time.monotonic() - t0
    every = (plan["every_new"],) * len(NEW) + (plan["every_prior"],) * len(PRIOR)
    for arm in ARMS:
        t = time.monotonic()
        train(arm, arm, plan["seeds"], overrides(plan, out, BENCHES, every, chosen.get(arm), arm), out, config)
        walls[arm] = time.monotonic() - t
    if not chosen:
        import yaml
        chosen = {arm: float(yaml.safe_load((HERE / config.format(arm=arm)).read_text())["algorithm"]["params"]["learning_rate"])
                  for arm in ARMS}
    walls["total"] = time.monotonic() - t0
    report(mode, plan, chosen, select_rows, walls, out)
    print((out / "report.md").read_text())
    print(f"report: {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
