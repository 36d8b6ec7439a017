"""Replicates: one config run under several seeds, as one group.

    evsys run CONFIG --seeds 0,1,2
    evsys_core.run_group("config.yaml", seeds=[0, 1, 2]) -> GroupResult

Each seed is an ordinary run (`runner.run` with `seed=N` as an override), one after another,
in its own directory `<run_name>-s<seed>`; every run.json carries the same `group_id` and
`group_name` (the run name without the seed). The index's `groups` and `group_metrics`
views summarise a group (mean ± 95% t-interval of each final metric across replicates).
A bad config fails on the first seed, before anything is written; a run that fails does not
stop the others; an interrupted one (SIGTERM, Ctrl-C) stops the group.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from evsys_core.errors import UsageError

MAX_SEEDS = 100


@dataclass
class GroupResult:
    group_id: str
    group_name: str
    seeds: list[int]
    runs: list[Any] = field(default_factory=list)   # runner.RunResult, one per seed started

    @property
    def status(self) -> str:
        """completed when every seed completed; else the first other status."""
        statuses = [r.status for r in self.runs]
        if len(statuses) == len(self.seeds) and all(s == "completed" for s in statuses):
            return "completed"
        return next((s for s in statuses if s != "completed"), "interrupted")


def parse_seeds(text: Any) -> list[int]:
    """'0,1,2' (or a list of ints) -> [0, 1, 2]; distinct non-negative integers, at most MAX_SEEDS."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    seeds: list[int] = []
    for item in items:
        s = str(item).strip()
        if isinstance(item, bool) or not re.fullmatch(r"\d{1,9}", s):
            raise UsageError(f"--seeds {text!r}: {s!r} is not a seed; give non-negative integers "
                             "separated by commas, e.g. --seeds 0,1,2")
        seeds.append(int(s))
    if not seeds:
        raise UsageError("--seeds is empty; give at least one seed, e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} names a seed twice; each replicate needs its own seed")
    if len(seeds) > MAX_SEEDS:
        raise UsageError(f"--seeds gives {len(seeds)} seeds; at most {MAX_SEEDS} per group")
    return seeds


def replicate_name(group_name: str, seed: int) -> str:
    return f"{group_name}-s{seed}"


def new_group_id() -> str:
    from evsys_core import rundir

    return "g" + rundir.new_run_id()


def run_group(config: Any, seeds: Sequence[int] | str, overrides: Sequence[str] = (), *,
              workspace: Path | None = None, run_name: str | None = None,
              run_dirs: Sequence[Path] | None = None, group_id: str | None = None,
              stream: Any = None) -> GroupResult:
    """Run `config` once per seed, in order, as one group. `run_dirs` (one per seed, already
    claimed, as a launcher does) replaces claiming `<run_name>-s<seed>` under the output dir."""
    from evsys_core.config import load_config
    from evsys_core.runner import output_of, run

    seeds = parse_seeds(seeds)
    if run_dirs is not None and len(run_dirs) != len(seeds):
        raise UsageError(f"{len(run_dirs)} run directories for {len(seeds)} seeds; give one per seed")
    if any(o.split("=", 1)[0].strip() == "seed" for o in overrides):
        raise UsageError("--set seed=... and --seeds both set the seed; use --seeds alone")
    name = run_name or output_of(load_config(config, overrides, workspace)
                                 if isinstance(config, (str, Path)) else config)[1]
    group = GroupResult(group_id or new_group_id(), name, seeds)
    for i, seed in enumerate(seeds):
        if isinstance(config, (str, Path)):
            one, extra = config, [*overrides, f"seed={seed}"]
        else:  # a RunConfig: overrides do not apply to it, so copy it with the seed set
            one, extra = config.model_copy(update={"seed": seed}), overrides
        with _own_log(run_dirs[i] if run_dirs and stream is None else None) as log:
            result = run(one, extra, workspace=workspace,
                         run_name=replicate_name(name, seed), run_dir=run_dirs[i] if run_dirs else None,
                         stream=log or stream, group={"group_id": group.group_id, "group_name": name})
        group.runs.append(result)
        if result.status == "interrupted":
            break
    return group


@contextlib.contextmanager
def _own_log(run_dir: Path | None) -> Iterator[Any]:
    """A launched group (the job engine claimed every directory): each replicate's progress
    goes to its own RUN_DIR/train.log, so tail_log on any replicate shows that replicate."""
    if run_dir is None:
        yield None
        return
    from evsys_core import rundir, safefs

    fd = safefs.open_fd(Path(run_dir) / rundir.TRAIN_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, run_dir)
    with os.fdopen(fd, "a", buffering=1) as f:
        yield f
