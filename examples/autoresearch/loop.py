"""A scripted research agent: a learning-rate search for the SDFT walkthrough, driven through
the real `evsys-mcp` server over stdio with the MCP client library — no LLM involved.

    python examples/autoresearch/loop.py [--iterations 3] [--max-steps 2]

It follows program.md: read past runs and conclusions, change one thing (the learning rate),
write and validate the config, launch, wait, measure, compare, conclude, keep a research log,
and finally print what it learned. A candidate replaces the incumbent only on a paired `better`
verdict; on `inconclusive` it adds evidence first — a replicate group of each side
(`launch_run(seeds=...)`, --seeds) — and compares the groups, all replicates' tasks pooled.
Runs go to experiments/autoresearch/runs/ (ignored by git).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import yaml
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = "examples/sdft_walkthrough/config.yaml"
DEMO = "examples/sdft_walkthrough/data/demo"
STUDY = "experiments/autoresearch"
PASS = "val/val/pass@1"
LOSS = "train/mean_loss"


def lr_tag(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def next_lr(tested: dict[float, dict[str, float | None]]) -> float:
    """One change at a time: start at the walkthrough's lr, try 10x, then walk toward the winner."""
    if not tested:
        return 1e-4
    if len(tested) == 1:
        (only,) = tested
        return only * 10
    best = max(tested, key=lambda lr: score(tested[lr]))
    ordered = sorted(tested)
    if best == ordered[-1]:
        cand = best * 3
    elif best == ordered[0]:
        cand = best / 3
    else:
        i = ordered.index(best)
        neighbour = max(ordered[i - 1], ordered[i + 1], key=lambda lr: score(tested[lr]))
        cand = math.sqrt(best * neighbour)
    cand = float(f"{cand:.1g}")
    while cand in tested:
        cand = float(f"{cand * 2:.1g}")
    return cand


def score(m: dict[str, float | None]) -> tuple[float, float]:
    """Higher is better: held-out pass@1 first, then lower training loss."""
    p = m.get(PASS)
    loss = m.get(LOSS)
    return (p if p is not None else -1.0, -loss if loss is not None else -math.inf)


def _delta(v: float | None, base: float | None) -> str:
    return "n/a" if v is None or base is None else f"{v - base:+.3f}"


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


class Agent:
    def __init__(self, client: Client, max_steps: int, log_path: Path, seeds: str, demo: bool = False) -> None:
        self.c = client
        self.max_steps = max_steps
        self.demo = demo                # the walkthrough's demo files: 12 training rows, 11 val tasks
        self.log_path = log_path
        self.seeds = seeds              # the replicates added when a comparison is inconclusive
        self.tested: dict[float, dict[str, float | None]] = {}
        self.runs: dict[float, str] = {}
        self.groups: dict[float, str] = {}  # lr -> its replicate group's name, once it has one
        self.configs: dict[float, str] = {}
        self.best: float | None = None  # the incumbent: replaced only on a paired `better` verdict

    async def tool(self, name: str, **args: Any) -> dict[str, Any]:
        r = await self.c.call_tool(name, args)
        if r.is_error:
            raise SystemExit(f"{name} failed: {r.content[0].text}")
        return r.structured_content

    async def read_history(self) -> None:
        """Step 0 of program.md: what has been run, and what was concluded."""
        past = await self.tool("query_runs", sql=(
            "SELECT r.run_id, r.name, r.status, r.learning_rate, r.max_steps, "
            f"(SELECT value FROM latest_metrics m WHERE m.run_id = r.run_id AND m.key = '{PASS}') AS pass1, "
            f"(SELECT value FROM latest_metrics m WHERE m.run_id = r.run_id AND m.key = '{LOSS}') AS loss, "
            "r.conclusion, r.group_name FROM runs r "
            "WHERE r.path LIKE '%experiments/autoresearch/runs/%' "
            "AND r.status = 'completed' ORDER BY r.created_at"))
        print(f"History: {len(past['rows'])} finished run(s) of this study in the index.")
        for run_id, name, _status, lr, steps, p1, loss, conclusion, group in past["rows"]:
            if lr is None or steps != self.max_steps:
                continue  # a different budget is a different question
            if group:   # a replicate group of a config tested before: the evidence for it
                self.groups[float(lr)] = group
                continue
            self.configs[float(lr)] = f"{STUDY}/{name}.yaml"   # where iterate() wrote it
            self.tested[float(lr)] = {PASS: p1, LOSS: loss}
            self.runs[float(lr)] = run_id
            if self.best is None or "new incumbent" in (conclusion or ""):
                self.best = float(lr)  # the first run, then each one a verdict promoted
            print(f"  {name}: lr={lr:g} pass@1={fmt(p1)} loss={fmt(loss)} — {(conclusion or '').strip()[:100]}")

    def config_text(self, lr: float, run_name: str) -> str:
        cfg = yaml.safe_load((REPO / BASE_CONFIG).read_text())
        cfg["algorithm"]["params"]["learning_rate"] = lr
        cfg["algorithm"]["params"]["max_steps"] = self.max_steps
        # the study measures val only, before training and at the end (the same for every run)
        cfg["metadata"]["benchmark"] = [dict(b, run_every=self.max_steps)
                                        for b in cfg["metadata"]["benchmark"] if b["name"] == "val"]
        if self.demo:
            cfg["data"]["path"] = f"{DEMO}/train.jsonl"
            cfg["metadata"]["benchmark"][0]["path"] = f"{DEMO}/val"
        cfg["callbacks"][0]["params"].update(output_dir=f"{STUDY}/runs", run_name=run_name)
        return yaml.safe_dump(cfg, sort_keys=False)

    async def iterate(self, i: int, lr: float) -> None:
        name = f"lr_{lr_tag(lr)}_steps{self.max_steps}"
        best_lr = self.best
        if best_lr is None:
            hypothesis = f"baseline at the walkthrough's lr {lr:g}"
        elif lr > best_lr:
            hypothesis = (f"raising lr {best_lr:g} -> {lr:g}: expect faster gains in pass@1 within "
                          f"{self.max_steps} steps, unless the larger updates overshoot")
        else:
            hypothesis = f"lowering lr {best_lr:g} -> {lr:g}: expect a smoother loss, smaller moves in pass@1"
        print(f"\n=== Iteration {i}: {name}\nhypothesis: {hypothesis}")
        path = f"{STUDY}/{name}.yaml"
        written = await self.tool("write_config", path=path, yaml_text=self.config_text(lr, name), overwrite=True)
        report = await self.tool("validate_config", path=written["path"], deep=True)
        print(f"config {written['path']}: {'valid' if report['ok'] else 'INVALID'} "
              f"(deep check, {len(report['warnings'])} warning(s))")
        if not report["ok"]:
            raise SystemExit(f"invalid config: {report['errors']}")
        self.configs[lr] = written["path"]
        launched = await self.tool("launch_run", config_path=written["path"])
        run = launched["run_id"]
        print(f"launched {run} -> {launched['run_dir']} (pid {launched['pid']})")
        t0 = time.monotonic()
        status = await self.wait(run)
        waited = time.monotonic() - t0
        if status["status"] != "completed":
            tail = await self.tool("tail_log", run=run, max_bytes=2000)
            print(tail["text"])
            await self.tool("record_conclusion", run=run, text=f"lr {lr:g} did not complete "
                            f"({status['status']}: {status['error']}); fix before retrying")
            raise SystemExit(f"run {run} {status['status']}")
        summary = await self.tool("read_summary", run=run, max_bytes=600)
        facts = [ln for ln in summary["text"].splitlines() if ln.startswith(("Status:", "Steps:"))]
        print(f"{status['status']} after {waited:.0f} s — summary.md: {' · '.join(facts)}")
        curves = await self.tool("get_metrics", run=run, keys=[PASS, LOSS])
        print("curves: " + " | ".join(
            f"{c['key']} " + " -> ".join(fmt(value) for _, value in c["points"]) for c in curves["series"]))
        metrics = {PASS: status["final_metrics"].get(PASS), LOSS: status["final_metrics"].get(LOSS)}
        verdict = (f"verdict: none yet (first data point, pass@1 {status['scores'].get(PASS)}, 1 seed); "
                   "the incumbent until a run is paired-better")
        self.tested[lr] = metrics
        self.runs[lr] = run
        if best_lr is None:
            self.best = lr
        else:
            verdict = await self.judge(best_lr, lr)
        conclusion = (f"lr {lr:g}, {self.max_steps} steps: pass@1 {fmt(metrics[PASS])}, final loss "
                      f"{fmt(metrics[LOSS])}; {verdict}. Next: lr {next_lr(self.tested):g}.")
        await self.tool("record_conclusion", run=run, text=conclusion)
        print(f"conclusion: {conclusion}")
        with self.log_path.open("a") as log:
            log.write(f"## {name} ({run})\n{hypothesis} → {verdict}\nnext: lr {next_lr(self.tested):g}\n\n")

    async def wait(self, run: str) -> dict[str, Any]:
        while True:
            status = await self.tool("wait_for_run", run=run, timeout_s=600)
            if not status["timed_out"]:
                return status
            print(f"  still running (step {status['step']}/{status['max_steps']}), waiting again")

    def side(self, lr: float) -> str:
        """What stands for a config in a comparison: its replicate group once it has one."""
        return self.groups.get(lr) or self.runs[lr]

    async def replicate(self, lr: float) -> None:
        """More evidence for one config: the same config under seeds `self.seeds`, one group."""
        name = f"lr_{lr_tag(lr)}_steps{self.max_steps}_seeds"
        launched = await self.tool("launch_run", config_path=self.configs[lr], run_name=name, seeds=self.seeds)
        reps = launched["replicates"]
        print(f"  replicates of lr {lr:g}: group {launched['group_name']} ({launched['group_id']}), seeds "
              f"{self.seeds}, one after another")
        for r in reps:
            status = await self.wait(r["run_id"])
            if status["status"] != "completed":
                raise SystemExit(f"replicate {r['run_name']} {status['status']}: {status.get('error')}")
        self.groups[lr] = launched["group_name"]

    async def compare(self, best_lr: float, lr: float) -> dict[str, Any] | None:
        cmp = await self.tool("compare_runs", runs=[self.side(best_lr), self.side(lr)], metric=PASS)
        return next((m for m in cmp["metrics"] if m["key"] == PASS), None)

    async def judge(self, best_lr: float, lr: float) -> str:
        """The evidence rule of program.md: a candidate replaces the incumbent only on a paired
        `better` verdict for the held-out metric; `inconclusive` first adds replicates of both
        configs and compares the groups; whatever the verdict, it is said with its evidence."""
        m = await self.compare(best_lr, lr)
        if m is not None and m["verdict"] == "inconclusive" and not (lr in self.groups and best_lr in self.groups):
            print(f"  inconclusive on {m['n_tasks']} tasks x {m['base_seeds']}/{m['cand_seeds']} seed(s) "
                  f"(p={m['p_value']:.3g}): adding replicates before concluding")
            for side in (best_lr, lr):
                if side not in self.groups:
                    await self.replicate(side)
            m = await self.compare(best_lr, lr)
        if m is None or m["verdict"] is None:
            return f"no verdict against lr {best_lr:g} ({(m or {}).get('note') or 'no paired tasks'}); incumbent kept"
        evidence = (f"verdict {m['verdict']}: Δpass@1 {m['delta']:+.3f} (95% CI {m['ci_low']:+.3f} to "
                    f"{m['ci_high']:+.3f}), p={m['p_value']:.3g} ({m['test']}), {m['n_tasks']} paired tasks, "
                    f"seeds {m['base_seeds']} (lr {best_lr:g}) vs {m['cand_seeds']} (lr {lr:g})")
        if m["verdict"] == "better":
            self.best = lr
            return f"better than lr {best_lr:g} — {evidence}; new incumbent"
        if m["verdict"] == "worse":
            return f"worse than lr {best_lr:g} — {evidence}; incumbent kept"
        return (f"not shown better than lr {best_lr:g} — {evidence}; not an improvement, even with "
                f"replicates: more tasks are needed to tell them apart; incumbent kept")

    async def report(self) -> None:
        print("\n=== What I learned")
        for lr in sorted(self.tested):
            m = self.tested[lr]
            print(f"  lr {lr:<8g} pass@1 {fmt(m[PASS])}  final loss {fmt(m[LOSS])}  ({self.runs[lr]})")
        best = self.best
        print(f"Incumbent: lr {best:g} ({self.side(best)}) at {self.max_steps} steps — replaced only by a "
              f"paired `better` verdict on {PASS}; raw differences below are not findings.")
        for lr in sorted(self.tested):
            if lr != best:
                d_pass = _delta(self.tested[lr][PASS], self.tested[best][PASS])
                d_loss = _delta(self.tested[lr][LOSS], self.tested[best][LOSS])
                print(f"  lr {lr:g} vs {best:g}: pass@1 {d_pass}, loss {d_loss}")
        print(f"Next experiment: lr {next_lr(self.tested):g}")
        listed = await self.tool("list_runs", where="conclusion IS NOT NULL", limit=10)
        print(f"Indexed runs with a conclusion: {', '.join(r['name'] for r in listed['runs'])}")
        print(f"Research log: {self.log_path.relative_to(REPO)}")


async def main(args: argparse.Namespace) -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "evsys_mcp", "--workspace", str(REPO)],
                                   cwd=str(REPO), env=dict(os.environ))  # this checkout's PYTHONPATH, threads
    log_path = REPO / STUDY / "research_log.md"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    async with Client(server, read_timeout_seconds=900) as client:
        tools = await client.list_tools()
        print(f"Connected to evsys-mcp over stdio: {len(tools.tools)} tools.")
        agent = Agent(client, args.max_steps, log_path, args.seeds, args.demo)
        await agent.read_history()
        for i in range(1, args.iterations + 1):
            await agent.iterate(i, next_lr(agent.tested))
        await agent.report()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=2, help="training steps per run (small: CPU)")
    p.add_argument("--demo", action="store_true",
                   help="train on the walkthrough's 12 demo rows and score its 11 demo val tasks (fast, but "
                        "too few tasks to tell most changes apart); default: the full files")
    p.add_argument("--seeds", default="0,1,2",
                   help="the replicate group each side of an inconclusive comparison gets (default 0,1,2)")
    anyio.run(main, p.parse_args())
