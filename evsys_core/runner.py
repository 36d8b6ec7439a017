"""From a YAML config to a trained model with in-loop scores and a run directory.

    evsys run CONFIG [--set KEY=VALUE ...] [--run-name NAME] [--resume RUN_DIR]
    evsys_core.run(config_or_path) -> RunResult(status, metrics, run_dir)

The order of a run: load and check everything that can be checked (config, data, tasks and
verifiers, model files, output directory and free space: what `evsys validate --deep`
checks) before anything is written; claim a fresh run directory; start the
backend; evaluate in-loop benchmarks at step 0; let the algorithm loop; evaluate, checkpoint
and report progress after each step; evaluate the after-training benchmarks; write the
summary. SIGTERM or Ctrl-C stops after the current step with a final checkpoint and status
`interrupted`; `--resume` continues a run from its last checkpoint in the same directory.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Sequence

from evsys_core import rundir
from evsys_core.errors import ConfigError, EvsysError, RunError
from evsys_core.stats import format_metrics


@dataclass
class RunResult:
    status: str
    metrics: dict[str, float]
    run_dir: Path
    run_id: str = ""
    error: str | None = None


@dataclass
class _Plan:
    """Everything checked before a single file is written."""
    cfg: Any
    dataset: Any
    benchmarks: list[tuple[Any, list[Any]]]
    output_dir: Path
    run_name: str


def output_of(cfg: Any) -> tuple[Path, str]:
    """Where a config's run directory goes: (output_dir, run_name), before `-2`, `-3`, ..."""
    logger = cfg.local_logger()
    output_dir = Path(logger.output_dir) if logger else cfg.workspace / "outputs"
    output_dir = output_dir if output_dir.is_absolute() else cfg.workspace / output_dir
    run_name = (logger.run_name if logger else None) or (
        Path(cfg.source_path).stem if getattr(cfg, "source_path", None) else "run")
    return output_dir, run_name


def plan(cfg: Any) -> _Plan:
    """Check everything a run needs (what `evsys validate --deep` checks); ConfigError with
    located issues, or RunError, before anything is written."""
    from evsys_core.data import load_tasks
    from evsys_core.validate import check_data, deep_checks

    found: list[Any] = []
    dataset = check_data(cfg, found.append)  # problems placed at their config line, as validate does
    if dataset is None:
        _refuse(cfg, [i for i in found if i.severity == "error"])
    # what `evsys validate --deep` refuses, a run refuses before writing anything: the
    # algorithm/data fit, templates, benchmarks and verifiers, the model's files, the output dir
    deep_checks(cfg, found.append, dataset=dataset)
    errors = [i for i in found if i.severity == "error"]
    if errors:
        _refuse(cfg, errors)
    benchmarks = [(spec, load_tasks(Path(spec.path))) for spec in cfg.metadata.benchmark]
    output_dir, run_name = output_of(cfg)
    check_writable(output_dir, cfg.workspace)
    return _Plan(cfg, dataset, benchmarks, output_dir, run_name)


def _refuse(cfg: Any, errors: list[Any]) -> NoReturn:
    source = getattr(cfg, "_source", None) or cfg.source_path or "config"
    n = len(errors)
    raise ConfigError("\n".join([f"cannot run {source} ({n} problem{'s' if n != 1 else ''}; "
                                  "`evsys validate --deep` shows the same):"]
                                 + [f"  {i}" for i in errors]), errors)


def check_writable(output_dir: Path, cfg_workspace: Path | None = None) -> None:
    """Fail before training, with a clear message, if run files could not be written
    (an unwritable or missing-parent output directory, or a full disk)."""
    problem = rundir.output_dir_problem(output_dir, cfg_workspace)
    if problem:
        raise RunError(f"cannot write run files under {output_dir}: {problem}; "
                       "set callbacks[].params.output_dir to a writable directory")


def _git_commit(workspace: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run(config: Any, overrides: Sequence[str] = (), *, workspace: Path | None = None,
        run_name: str | None = None, run_dir: Path | None = None, resume: Path | None = None,
        stream: Any = None, group: dict[str, str] | None = None) -> RunResult:
    """Run a config (path or RunConfig). Bad input raises EvsysError before anything is written.
    `group` ({group_id, group_name}) marks the run as one replicate of a group (replicates.py)."""
    from evsys_core.config import config_to_yaml, load_config
    from evsys_core.jobs.record import TRAIN, new_record, shown_path

    if resume is not None:
        resume = Path(resume)
        if not (resume / "config.yaml").exists():
            raise RunError(f"{resume}: not a run directory (no config.yaml); pass the directory of the run to resume")
        info = rundir.read_run_json(resume)
        if info.get("status") == "completed":
            raise RunError(f"{resume}: the run already completed (step {info.get('step')} of "
                           f"{info.get('max_steps')}); nothing to resume. Start a new run to train more")
        if info.get("status") == rundir.ACTIVE:
            raise RunError(f"{resume} is still running (pid {info.get('pid')}); cancel it before resuming")
        cfg = load_config(resume / "config.yaml", overrides, workspace)
    elif isinstance(config, (str, Path)):
        cfg = load_config(config, overrides, workspace)
    else:
        cfg = config
    checked = plan(cfg)
    yaml_text = config_to_yaml(cfg)
    config_hash = hashlib.sha256(yaml_text.encode()).hexdigest()[:16]

    if resume is not None:
        run_dir = resume
        _confine(run_dir, cfg.workspace)
        start_step = _rewind(run_dir)
        if overrides:  # the config the run goes on with, and what changed, on record
            rundir.write_text_atomic(run_dir / "config.yaml", yaml_text, run_dir)
            info["config_hash"] = config_hash
        resumes = info.get("resumes") if isinstance(info.get("resumes"), list) else []
        info.update(status=rundir.ACTIVE, **rundir.owner(), ended_at=None, error=None, resumed_at=time.time(),
                    resumes=[*resumes, {"at": time.time(), "from_step": start_step, "overrides": list(overrides)}])
    else:
        if run_dir:
            run_dir = Path(run_dir)
            _confine(run_dir, cfg.workspace)
        else:
            run_dir = rundir.claim_run_dir(checked.output_dir, run_name or checked.run_name, cfg.workspace)
        start_step = 0
        claimed = rundir.read_run_json(run_dir)  # a launcher may have written a provisional one
        info = new_record(
            run_dir, kind=TRAIN, algorithm=cfg.algorithm.kind, model=cfg.model.name, backend=cfg.backend.kind,
            run_id=claimed.get("id"), config_hash=config_hash,
            git_commit=_git_commit(cfg.workspace),
            config_path=shown_path(getattr(cfg, "source_path", None), cfg.workspace))
        info.update(group or {})  # a replicate of a group (replicates.py)
        rundir.write_text_atomic(run_dir / "config.yaml", yaml_text, run_dir)

    from evsys_core.callbacks import LocalLogger

    logger = LocalLogger(run_dir, info)
    logger.update()
    return _train(checked, logger, start_step, stream)


def _confine(run_dir: Path, workspace: Path) -> None:
    """The run directory exists and no link leads it out of the workspace it is named in."""
    from evsys_core import safefs

    safefs.makedirs(run_dir, safefs.root_for(run_dir, workspace))


def _rewind(run_dir: Path) -> int:
    """Drop log rows past the last checkpoint (all of them without one: the run starts over),
    so a resumed run logs no step twice; returns the step to continue from."""
    from evsys_core import checkpoints

    found = checkpoints.latest(run_dir)
    step = found[0] if found else 0
    for path in [run_dir / rundir.METRICS, *sorted((run_dir / rundir.PREDICTIONS).glob("*.jsonl"))]:
        if path.exists():
            kept = [r for r in rundir.read_jsonl(path) if found and _step_of(r) <= step]
            rundir.write_text_atomic(path, "".join(_json_line(r) for r in kept), run_dir)
    return step


def _step_of(row: dict) -> float:
    step = row.get("step", 0)
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else float("inf")


def _json_line(row: dict) -> str:
    import json

    return json.dumps(row, ensure_ascii=False) + "\n"


class _StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _train(plan: _Plan, logger: Any, start_step: int, stream: Any) -> RunResult:
    from evsys_core import checkpoints, safefs
    from evsys_core.algorithms import get_algorithm
    from evsys_core.algorithms.context import TrainContext
    from evsys_core.callbacks import Progress

    cfg, run_dir = plan.cfg, logger.run_dir
    out = stream or sys.stdout
    status, error, progress = "failed", None, None
    with _StopFlag() as stop:
        try:
            from evsys_core.backends import get_service

            print(f"Run {logger.info['name']} ({logger.info['id']}): {cfg.algorithm.kind} on {cfg.model.name} "
                  f"[{cfg.backend.kind}] -> {run_dir}", file=out, flush=True)
            service = get_service(cfg.backend.kind, device=cfg.backend.device, seed=cfg.seed)
            tc = service.create_lora_training_client(base_model=cfg.model.name, rank=cfg.algorithm.params.lora_rank,
                                                     seed=cfg.seed)
            if start_step:
                tc.load_state_with_optimizer(checkpoints.latest(run_dir)[1]).result()
            ctx = TrainContext(params=cfg.algorithm.params, training_client=tc, rows=plan.dataset.rows,
                               seed=cfg.seed, start_step=start_step, task_dir=Path(cfg.data.path).parent,
                               should_stop=lambda: stop.requested)
            logger.update(max_steps=ctx.total_steps)
            saver = checkpoints.Checkpointer(tc, run_dir, cfg.algorithm.params.checkpoint_every, ctx.total_steps)
            progress = Progress(ctx.total_steps, start_step, stream=out)
            in_loop = [(s, t) for s, t in plan.benchmarks if s.run_every]
            after = [(s, t) for s, t in plan.benchmarks if not s.run_every]
            at_start = [(s, t) for s, t in in_loop if s.at_start]
            if start_step == 0 and at_start:
                _evaluate(ctx, at_start, 0, logger, progress, cfg)

            def on_step_end(step: int, metrics: dict[str, float]) -> None:
                logger.log_metrics(step, "train", metrics)
                due = [(s, t) for s, t in in_loop if step % s.run_every == 0 or step == ctx.total_steps]
                if due:
                    _evaluate(ctx, due, step, logger, progress, cfg)
                saver.after_step(step)
                logger.update(step=step)
                progress.step(step, metrics)

            ctx.on_step_end = on_step_end
            ctx.on_log = lambda step, metrics: logger.log_metrics(step, "train", metrics)
            get_algorithm(cfg.algorithm.kind)(ctx)

            step = logger.info.get("step", 0)
            saver.save(step, final=not stop.requested)
            if stop.requested:
                status = "interrupted"
            else:
                if after:
                    _evaluate(ctx, after, step, logger, progress, cfg)
                status = "completed"
        except KeyboardInterrupt:
            status, error = "interrupted", "aborted by a second interrupt"
        except EvsysError as e:
            error = str(e)
        except Exception as e:  # a crash is recorded in the run, then reported
            from evsys_core.callbacks import write_error, disk_full

            if safefs.is_disk_full(e) or disk_full(run_dir):
                error = write_error(e, run_dir)  # one line, no traceback: nothing to debug
            else:
                error = f"{type(e).__name__}: {e}"
                import traceback

                traceback.print_exc()
        finally:
            if progress is not None:
                progress.close()
    metrics = logger.finish(status, error)
    rel = os.path.relpath(run_dir) if not os.path.relpath(run_dir).startswith("..") else str(run_dir)
    print(f"Status: {status}", file=out)
    if error:
        print(f"Error: {error}", file=out)
    print(f"Metrics: {format_metrics(metrics)}", file=out)
    print(f"Logs: {rel} (metrics.jsonl, predictions/, summary.md)", file=out, flush=True)
    return RunResult(status, metrics, run_dir, logger.info["id"], error)


def _evaluate(ctx: Any, benches: list[tuple[Any, list[Any]]], step: int, logger: Any, progress: Any, cfg: Any) -> None:
    from evsys_core.benchmarks.scoring import evaluate

    sampler = ctx.sampler()
    for spec, tasks in benches:
        result = evaluate(sampler, ctx.tokenizer, spec, tasks, system_prompt=cfg.algorithm.params.system_prompt,
                          seed=cfg.seed)  # replicates sample their evaluations apart (temperature > 0)
        logger.log_metrics(step, spec.split, result.metrics)
        logger.log_predictions(spec.name, step, result.predictions)
        progress.eval(step, result.metrics)


# --- CLI -------------------------------------------------------------------------------

def register(sub: Any) -> None:
    p = sub.add_parser("run", help="train a model from a YAML config",
                       description="Train from CONFIG; writes a run directory (metrics.jsonl, predictions/, summary.md).")
    p.add_argument("config", nargs="?", help="path to the YAML config (omit with --resume)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set algorithm.params.max_steps=10")
    p.add_argument("--run-name", help="name of the run directory (default: the local_logger run_name)")
    p.add_argument("--run-dir", type=Path, action="append", help=argparse_suppress())  # one per seed
    p.add_argument("--group-id", help=argparse_suppress())
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--seeds", metavar="S,S,...",
                   help="run the config once per seed, one after another, as one replicate group "
                        "(directories <run_name>-s<seed>), e.g. --seeds 0,1,2")
    p.add_argument("--workspace", type=Path, help="root that relative paths resolve against (default: cwd)")
    p.set_defaults(func=_cmd_run)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


def _cmd_run(args: Any) -> int:
    from evsys_core.errors import UsageError

    if not args.config and not args.resume:
        raise UsageError("give a CONFIG to run, or --resume RUN_DIR")
    if args.seeds is not None:
        from evsys_core.replicates import run_group

        if args.resume:
            raise UsageError("--resume continues one run; resume each replicate's directory on its own")
        group = run_group(args.config, args.seeds, args.overrides, workspace=args.workspace,
                          run_name=args.run_name, run_dirs=args.run_dir, group_id=args.group_id)
        print(f"Group {group.group_name} ({group.group_id}): "
              + ", ".join(f"seed {s} {r.status}" for s, r in zip(group.seeds, group.runs)), flush=True)
        return 0 if group.status == "completed" else 1
    if args.run_dir and len(args.run_dir) > 1:
        raise UsageError("several run directories are for --seeds (one per seed)")
    result = run(args.config, args.overrides, workspace=args.workspace, run_name=args.run_name,
                 run_dir=args.run_dir[0] if args.run_dir else None, resume=args.resume)
    return 0 if result.status == "completed" else 1
