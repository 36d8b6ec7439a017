"""Where a run's progress goes: the run directory (`local_logger`) and the terminal.

`LocalLogger` writes the run-directory contract of docs/design.md: `run.json`, `config.yaml`,
`metrics.jsonl`, `predictions/<bench>.jsonl`, `summary.md` (+ `learning_curve.png`).
Every JSONL line is written whole and flushed; run.json is replaced atomically; nothing is
written through a symbolic link out of the run directory (`safefs`). A full disk makes the
run `failed` with a one-line reason and leaves no partial or temporary file.
`Progress` shows step, loss, the last eval and the ETA: a live bar in a terminal, plain
lines otherwise.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from evsys_core import rundir, safefs
from evsys_core.stats import format_metrics, is_companion


class LocalLogger:
    def __init__(self, run_dir: Path, info: dict[str, Any]):
        self.run_dir = run_dir
        self.info = info
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.last_train: dict[str, float] = {}
        safefs.makedirs(run_dir / rundir.PREDICTIONS, run_dir)

    def update(self, **fields: Any) -> None:
        self.info.update(fields)
        rundir.write_json_atomic(self.run_dir / rundir.RUN_JSON, self.info, self.run_dir)

    def log_metrics(self, step: int, split: str, metrics: dict[str, float]) -> None:
        rundir.append_jsonl(self.run_dir / rundir.METRICS, {"step": step, "split": split, "metrics": metrics},
                            self.run_dir)
        if split == "train":
            self.last_train.update(metrics)  # the latest value of every training key
        else:
            self.evals.append((step, metrics))

    def log_predictions(self, bench: str, step: int, rows: list[dict[str, Any]]) -> None:
        path = self.run_dir / rundir.PREDICTIONS / f"{bench}.jsonl"
        for row in rows:
            rundir.append_jsonl(path, {"step": step, **row}, self.run_dir)

    def final_metrics(self) -> dict[str, float]:
        """The latest value of every training and eval metric."""
        final = dict(self.last_train)
        for _, metrics in self.evals:
            final.update(metrics)
        return final

    def finish(self, status: str, error: str | None = None) -> dict[str, float]:
        """Write summary.md, then the final status: a reader that sees `completed` finds the summary.

        If the summary or its plot cannot be written (a full disk), the run is `failed` with
        that reason, and run.json is still saved, in place if there is no room for a new file."""
        final = self.final_metrics()
        self.info.update(status=status, ended_at=time.time(), error=error, final_metrics=final)
        try:
            curve = self._plot()
            rundir.write_text_atomic(self.run_dir / rundir.SUMMARY, self._summary(status, final, error, curve),
                                     self.run_dir)
        except OSError as e:
            self.info.update(status="failed", error=error or write_error(e, self.run_dir))
        try:
            self.update()
        except OSError as e:
            if not safefs.is_disk_full(e):
                raise
            safefs.rewrite_in_place(self.run_dir / rundir.RUN_JSON,
                                    json.dumps(self.info, indent=2, default=str) + "\n", self.run_dir)
        return final

    def _summary(self, status: str, final: dict[str, float], error: str | None, curve: str | None) -> str:
        i = self.info
        took = (i.get("ended_at") or time.time()) - (i.get("started_at") or i["created_at"])
        lines = [
            f"# {i['name']}",
            "",
            f"Status: {status}",
            f"Algorithm: {i['algorithm']} · Model: {i['model']} · Backend: {i['backend']}",
            f"Steps: {i.get('step', 0)} / {i.get('max_steps')} · Duration: {format_duration(took)}",
            f"Run id: {i['id']}",
        ]
        if error:
            lines += ["", f"Error: {error}"]
        lines += ["", "## Final metrics", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(format_metrics(final).items())] or ["- (none)"]
        from evsys_core.benchmarks.ceiling import summary_lines

        lines += summary_lines(final)
        lines += ["", "## Evaluations", ""]
        lines += [f"- step {step}: " + "; ".join(f"{k}={v}" for k, v in sorted(format_metrics(m).items()))
                  for step, m in self.evals] or ["- (none)"]
        if self.evals:
            lines += ["", "± is the 95% interval over tasks (1.96 standard errors); "
                      "`evsys compare` tells whether two runs differ."]
        if curve:
            lines += ["", f"![learning curve]({curve})"]
        return "\n".join(lines) + "\n"

    def _plot(self) -> str | None:
        """learning_curve.png: training loss (and reward, KL) and every eval metric against step."""
        from evsys_core import plotting

        rows = list(rundir.read_jsonl(self.run_dir / rundir.METRICS))
        if len(rows) < 2 or not plotting.available():
            return None
        series: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            for k, v in row["metrics"].items():
                if isinstance(v, (int, float)) and not is_companion(k):
                    series.setdefault(k, []).append((row["step"], v))
        train = plotting.Panel("training", [(k, p) for k, p in series.items()
                                            if k in ("train/mean_loss", "train/mean_reward", "train/kl")])
        evals = plotting.Panel("evaluation", [(k, p) for k, p in series.items() if not k.startswith("train/")])
        png = plotting.draw([train, evals], size=(10, 3.6), dpi=90)  # bytes, then one safe atomic write
        safefs.write_atomic(self.run_dir / "learning_curve.png", png, self.run_dir)
        return "learning_curve.png"


class Progress:
    """Step, loss, last eval and ETA: a rich progress bar on a TTY, plain lines otherwise."""

    def __init__(self, total: int, start: int = 0, stream: Any = None, live: bool | None = None):
        self.total, self.start = total, start
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.t0 = time.time()
        self.last_eval = ""
        self._eval_step, self._evals = -1, {}
        self._bar = None
        if self.live:
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def eval(self, step: int, metrics: dict[str, float]) -> None:
        if step != self._eval_step:
            self._eval_step, self._evals = step, {}
        self._evals.update(metrics)
        self.last_eval = " ".join(f"{k} {v}" for k, v in format_metrics(self._evals).items())
        if not self.live:
            text = " · ".join(f"{k} {v}" for k, v in format_metrics(metrics).items())
            print(f"eval step {step}: {text}", file=self.stream, flush=True)

    def step(self, step: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("train/mean_loss")
        info = " · ".join(x for x in (f"loss {loss:.4f}" if loss is not None else "", self.last_eval) if x)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
            return
        done = step - self.start
        per_step = (time.time() - self.t0) / max(done, 1)
        eta = format_duration(per_step * (self.total - step))
        print(f"step {step}/{self.total} · {info} · {per_step:.1f} s/step · eta {eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def write_error(e: BaseException, run_dir: Path) -> str:
    """One line saying why a run file could not be written (a full disk said as such)."""
    what = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else (e.strerror or str(e))
    where = getattr(e, "filename", None) or run_dir
    if safefs.is_disk_full(e) or disk_full(run_dir):
        return (f"the disk is full ({what}) writing {where}; free some space, then "
                f"`evsys run --resume {run_dir}` continues from the last checkpoint")
    return f"cannot write {where}: {what}".replace("\n", " ")


def disk_full(run_dir: Path) -> bool:
    import os

    try:
        st = os.statvfs(run_dir)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
