"""`evsys score`: score a base model or a run's trained weights on a benchmark directory.

    evsys score --benchmark DIR (--model NAME | --run RUN_DIR) [--metrics pass@1 ...]
                [--num-samples N] [--max-tokens N] [--output DIR] [--detach] [--json] [--workspace DIR]

The results are a run directory of their own (kind "score" in run.json and the index,
algorithm "score", parent_run_id = the scored run's id), under `--output` (default
`<workspace>/outputs/scores`): run.json (its step counts the tasks scored so far, of
max_steps), metrics.jsonl (one eval row at step 0), predictions/<bench>.jsonl and summary.md.
`--detach` starts it through the job engine (`evsys_core.jobs`), as the MCP server's
score_benchmark does; `score_benchmark` is the same thing as a function, in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from evsys_core import rundir, safefs
from evsys_core.benchmarks import passk
from evsys_core.errors import RunError, UsageError
from evsys_core.stats import format_metrics


@dataclass
class ScoreResult:
    run_dir: Path
    metrics: dict[str, float]
    run_id: str = ""
    num_tasks: int = 0


@dataclass
class _Spec:
    """The fields of a config BenchmarkSpec that scoring reads."""
    name: str
    path: Path
    split: str = "val"
    metrics: list[str] = field(default_factory=lambda: list(passk.DEFAULT_METRICS))
    num_samples: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass
class _Target:
    backend: str
    model: str
    model_path: str | None = None
    parent: dict[str, Any] | None = None
    parent_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def _resolve(workspace: Path, p: str | Path) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else workspace / path


def _find_run(workspace: Path, run: str | Path) -> Path:
    path = _resolve(workspace, run)
    if os.path.isfile(path / rundir.RUN_JSON) or os.path.isfile(path / "config.yaml"):
        return path
    try:  # a run id or name, through the history index when it is there
        from evsys_core.history.index import open_index
    except ImportError:
        open_index = None
    if open_index is not None and not Path(str(run)).is_absolute() and "/" not in str(run):
        found = open_index(workspace).resolve(str(run))  # RunError lists candidates
        where = found.get("path") or found.get("run_dir")
        if where:
            return _resolve(workspace, where)
    raise RunError(f"--run {run}: {path} is not a run directory (no run.json); pass the "
                   "directory of a finished training run (e.g. outputs/<run_name>)")


def _run_target(run_dir: Path, backend: str | None) -> _Target:
    info = rundir.read_run_json(run_dir)
    if not info:
        raise RunError(f"{run_dir / rundir.RUN_JSON}: missing or not valid JSON; pass the "
                       "directory of a training run")
    if info.get("status") == rundir.ACTIVE:
        raise RunError(f"{run_dir}: the run is still running (pid {info.get('pid')}); wait for "
                       "it to finish, or score a checkpoint after it ends")
    from evsys_core import checkpoints

    ckpts = run_dir / rundir.CHECKPOINTS
    model_path = None
    try:
        found = checkpoints.latest(run_dir)
    except RunError:
        found = None
    if found and found[1].startswith("tinker://") and found[2] == "final":
        model_path = found[1]
    elif (ckpts / "final").exists():
        model_path = str(ckpts / "final")
    if model_path is None:
        raise RunError(f"{run_dir}: no final checkpoint ({ckpts / 'final'} is missing; the run's "
                       f"status is {info.get('status')!r}); score a run that completed, or "
                       "use --model to score the base model")
    config: dict[str, Any] = {}
    try:
        import yaml

        loaded = yaml.safe_load((run_dir / "config.yaml").read_text())
        config = loaded if isinstance(loaded, dict) else {}
    except Exception:  # noqa: BLE001 - an unreadable config only loses the defaults
        pass
    return _Target(backend=backend or info.get("backend") or "local",
                   model=info.get("model") or "?", model_path=model_path,
                   parent=info, parent_dir=run_dir, config=config)


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _matching_bench(config: dict[str, Any], bench_dir: Path, workspace: Path) -> dict[str, Any]:
    """The scored run's own benchmark entry for this directory, if it had one."""
    for entry in _dig(config, "metadata", "benchmark") or []:
        if isinstance(entry, dict) and entry.get("path"):
            try:
                if _resolve(workspace, entry["path"]).resolve() == bench_dir.resolve():
                    return entry
            except OSError:
                continue
    return {}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:60] or "model"


@dataclass
class ScorePlan:
    """Everything a score checks before anything is written (`plan_score`)."""
    workspace: Path
    bench_dir: Path
    spec: _Spec
    target: _Target
    tasks: list[Any]
    num_samples: int
    temperature: float
    max_tokens: int
    out_dir: Path
    system_prompt: str | None
    seed: int

    @property
    def dir_name(self) -> str:
        who = self.target.parent_dir.name if self.target.parent_dir else _slug(self.target.model.split("/")[-1])
        return f"{_slug(self.spec.name)}-{who}"


def plan_score(workspace: str | Path, benchmark_dir: str | Path, *,
               model: str | None = None, run: str | Path | None = None,
               metrics: Sequence[str] | None = None, num_samples: int | None = None,
               max_tokens: int | None = None, temperature: float | None = None,
               backend: str | None = None, name: str | None = None,
               split: str | None = None, output: str | Path | None = None,
               system_prompt: str | None = None, seed: int = 0, import_code: bool = True) -> ScorePlan:
    """Check a score request; raises EvsysError subclasses naming the argument (`benchmark`,
    `model`, `run`, ...: the `evsys score` flags and the score_benchmark tool share the names).
    `import_code=False`: python verifiers' modules are parsed, not imported (the MCP server,
    which has a child process import them: `evsys validate --deep BENCHMARK_DIR`).

    Defaults for name/split/metrics/num_samples/max_tokens/temperature come from the scored
    run's own entry for this benchmark (if its config had one), else from the directory
    name, "val", passk.DEFAULT_METRICS, max k, 64 and 0.0 (1.0 when sampling more than once).
    """
    from evsys_core.benchmarks.scoring import sampling_settings
    from evsys_core.benchmarks.verifiers import check_spec
    from evsys_core.data import load_tasks_with_lines

    workspace = Path(workspace).resolve()
    if (model is None) == (run is None):
        raise UsageError("give exactly one of model (a base model name) or run (a training run whose "
                         "final weights to score)")
    bench_dir = _resolve(workspace, benchmark_dir)
    if not os.path.isfile(bench_dir / "tasks.jsonl"):  # False, not an error, for unusable names
        raise UsageError(f"benchmark {benchmark_dir}: {bench_dir / 'tasks.jsonl'} does not "
                         "exist; give a directory holding tasks.jsonl")
    if backend is not None and backend not in ("local", "tinker"):
        raise UsageError(f"backend {backend!r}: use local or tinker")
    for m in metrics or []:
        try:
            passk.parse_metric(m)
        except ValueError as e:
            raise UsageError(f"metrics: {e}") from None

    if run is not None:
        target = _run_target(_find_run(workspace, run), backend)
        entry = _matching_bench(target.config, bench_dir, workspace)
        if system_prompt is None:
            system_prompt = _dig(target.config, "algorithm", "params", "system_prompt")
    else:
        local = _resolve(workspace, model)  # a model directory inside the workspace
        name_or_dir = str(local) if not Path(str(model)).is_absolute() and os.path.exists(local) \
            else str(model)
        target, entry = _Target(backend=backend or "local", model=name_or_dir), {}
        if target.backend == "local":  # fail before writing anything (ModelNotFoundError)
            from evsys_core.backends.models import resolve_local_model

            resolve_local_model(name_or_dir, workspace)
    spec = _Spec(
        name=name or entry.get("name") or bench_dir.name,
        path=bench_dir,
        split=split or entry.get("split") or "val",
        metrics=list(metrics or entry.get("metrics") or passk.DEFAULT_METRICS),
        num_samples=num_samples if num_samples is not None else entry.get("num_samples"),
        max_tokens=max_tokens if max_tokens is not None else entry.get("max_tokens"),
        temperature=temperature if temperature is not None else entry.get("temperature"),
    )
    for what, value in (("benchmark name (name, else the directory name)", spec.name),
                        ("split", spec.split)):
        if not safefs.SAFE_NAME.fullmatch(str(value)):
            raise UsageError(f"{what} {value!r}: use only letters, digits, '.', '_' and '-'; "
                             "it becomes part of the metric keys <split>/<name>/<metric>")
    n, temp, max_tok = sampling_settings(spec)  # ConfigError on metrics/num_samples mismatch
    numbered = load_tasks_with_lines(bench_dir)
    for line, task in numbered:
        check_spec(task.verifier, bench_dir, line=line, task_id=task.task_id, import_code=import_code)
    out_dir = _resolve(workspace, output) if output else workspace / "outputs" / "scores"
    problem = rundir.output_dir_problem(out_dir, workspace)
    if problem:
        raise RunError(f"cannot write the score's run directory under {out_dir}: {problem}; "
                       "give output a writable directory")
    return ScorePlan(workspace, bench_dir, spec, target, [t for _, t in numbered], n, temp, max_tok,
                     out_dir, system_prompt, seed)


def score_record(plan: ScorePlan, run_dir: Path, pid: int | None = None, run_id: str | None = None) -> dict[str, Any]:
    """The run.json a score run starts with (kind "score"; its steps count scored tasks)."""
    from evsys_core.jobs.record import SCORE, new_record, shown_path

    target, spec, ws = plan.target, plan.spec, plan.workspace
    parent = target.parent or {}
    return new_record(
        run_dir, kind=SCORE, algorithm="score", model=target.model, backend=target.backend, run_id=run_id,
        pid=pid, max_steps=len(plan.tasks),
        parent_run_id=parent.get("id") or (rundir.inferred_run_id(target.parent_dir) if target.parent_dir else None),
        score={"benchmark": shown_path(plan.bench_dir, ws), "benchmark_name": spec.name,
               "split": spec.split, "metrics": spec.metrics, "num_samples": plan.num_samples,
               "max_tokens": plan.max_tokens, "temperature": plan.temperature, "num_tasks": len(plan.tasks),
               "model_path": shown_path(target.model_path, ws),
               "scored_run_dir": shown_path(target.parent_dir, ws)})


def score_benchmark(workspace: str | Path, benchmark_dir: str | Path, *, run_dir: Path | None = None,
                    stream: Any = None, **options: Any) -> ScoreResult:
    """Score a base model (`model=`) or a training run's final weights (`run=`) on the benchmark
    in `benchmark_dir` and write the results as a run directory (a fresh one under `output`,
    or `run_dir`, already claimed by a launcher). Options: those of `plan_score`."""
    plan = plan_score(workspace, benchmark_dir, **options)
    return run_score(plan, run_dir, stream)


def run_score(plan: ScorePlan, run_dir: Path | None = None, stream: Any = None) -> ScoreResult:
    from evsys_core.benchmarks.scoring import evaluate
    from evsys_core.callbacks import LocalLogger

    target, spec, tasks = plan.target, plan.spec, plan.tasks
    if run_dir is None:
        run_dir = rundir.claim_run_dir(plan.out_dir, plan.dir_name, plan.workspace)
    claimed = rundir.read_run_json(run_dir)  # a launcher's record: keep its id
    logger = LocalLogger(run_dir, score_record(plan, run_dir, run_id=claimed.get("id")))
    logger.update()
    out = stream or sys.stderr
    print(f"Scoring {target.model_path or target.model} ({target.backend}) on {spec.name}: "
          f"{len(tasks)} tasks x {plan.num_samples} samples", file=out, flush=True)
    try:
        from evsys_core.backends import get_service

        service = get_service(target.backend, seed=plan.seed)
        if target.model_path:
            client = service.create_sampling_client(model_path=target.model_path)
        else:
            client = service.create_sampling_client(base_model=target.model)
        result = evaluate(client, client.get_tokenizer(), spec, tasks, system_prompt=plan.system_prompt,
                          seed=plan.seed, on_task=lambda done: logger.update(step=done))
        logger.log_metrics(0, spec.split, result.metrics)
        logger.log_predictions(spec.name, 0, result.predictions)
    except KeyboardInterrupt:
        logger.finish("interrupted", "interrupted by the user")
        raise
    except BaseException as e:
        logger.finish("failed", f"{type(e).__name__}: {e}")
        raise
    final = logger.finish("completed")
    return ScoreResult(run_dir, final, logger.info["id"], len(tasks))


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "score", help="score a base model or a run's weights on a benchmark",
        description="Score a base model (--model) or a training run's final weights (--run) on "
                    "a benchmark directory (tasks.jsonl). Results go to a run directory of "
                    "their own under --output.")
    p.add_argument("--benchmark", required=True, metavar="DIR",
                   help="benchmark directory holding tasks.jsonl")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", metavar="NAME", help="base model to score")
    who.add_argument("--run", metavar="RUN_DIR", help="training run whose final weights to score")
    p.add_argument("--metrics", nargs="+", metavar="METRIC",
                   help="pass@k and/or mean_score (default: the run's own, else pass@1)")
    p.add_argument("--num-samples", type=int, metavar="N", help="samples per task (default: max k)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="tokens per answer (default 64)")
    p.add_argument("--temperature", type=float, help="default 0.0 for one sample, else 1.0")
    p.add_argument("--backend", choices=("local", "tinker"),
                   help="default: local for --model, the run's own for --run")
    p.add_argument("--name", help="benchmark name in metric keys (default: directory name)")
    p.add_argument("--split", help="split label in metric keys (default: val)")
    p.add_argument("--output", metavar="DIR",
                   help="where the score's run directory goes (default <workspace>/outputs/scores)")
    p.add_argument("--detach", action="store_true",
                   help="start the score as a detached job and return at once (follow it with "
                        "`evsys wait`, stop it with `evsys cancel`)")
    p.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)  # a launcher's claimed directory
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--workspace", metavar="DIR", default=".",
                   help="workspace root relative paths resolve against (default: .)")
    p.set_defaults(func=_handle)


def score_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "run": args.run, "metrics": args.metrics, "num_samples": args.num_samples,
            "max_tokens": args.max_tokens, "temperature": args.temperature, "backend": args.backend,
            "name": args.name, "split": args.split, "output": args.output}


def _handle(args: argparse.Namespace) -> int:
    for flag, value in (("--num-samples", args.num_samples), ("--max-tokens", args.max_tokens)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.detach:
        from evsys_core.jobs.cli import print_launch
        from evsys_core.jobs.engine import Engine

        return print_launch(Engine(Path(args.workspace)).launch_score(args.benchmark, **score_options(args)),
                            args.json)
    if args.run_dir is not None:  # a detached score: `evsys cancel` (SIGTERM) ends it as interrupted
        import signal

        def stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
    result = score_benchmark(args.workspace, args.benchmark, run_dir=args.run_dir, **score_options(args))
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "run_id": result.run_id,
                          "status": "completed", "metrics": result.metrics}))
    else:
        print("Status: completed")
        print(f"Metrics: {format_metrics(result.metrics)}")
        print(f"Logs: {result.run_dir} (metrics.jsonl, predictions/, summary.md)")
    return 0
