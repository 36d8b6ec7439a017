"""A run's checkpoints: when to save them, where they are, which ones to keep.

    <run_dir>/checkpoints/step_000040/  final/  latest.json = {"step", "path", "name"}

`checkpoint_every: N` saves every N steps, `0` only the final one; unset (the default) saves
every tenth of the run (at least every step of a run under ten steps) and whenever
AUTO_MINUTES have passed since the last one, so that a run killed at any point resumes close
to where it died. Only the newest KEEP step checkpoints are kept (`final` always is).
`latest.json` stores the path relative to the run directory (a tinker:// path as is), so a
copied or moved run resumes from its own weights; an older absolute path is read as the
checkpoint of the same name in the run's own `checkpoints/`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from evsys_core import rundir, safefs
from evsys_core.errors import RunError

AUTO_PER_RUN = 10  # default cadence: a checkpoint every tenth of the run ...
AUTO_MINUTES = 10.0  # ... and at least this often
KEEP = 2  # step checkpoints kept besides `final`
LATEST = "latest.json"


def latest(run_dir: Path) -> tuple[int, str, str] | None:
    """(step, path, name) of the checkpoint latest.json points at, or None if there is none."""
    pointer_file = run_dir / rundir.CHECKPOINTS / LATEST
    if not pointer_file.exists():
        return None
    try:
        pointer = json.loads(pointer_file.read_text())
        step, path = int(pointer["step"]), str(pointer["path"])
        name = str(pointer.get("name") or Path(path).name)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise RunError(f"{pointer_file}: not a checkpoint pointer ({type(e).__name__}: {e}); "
                       "delete it to resume from the start") from None
    if path.startswith("tinker://"):
        return step, path, name
    return step, str(run_dir / rundir.CHECKPOINTS / Path(path).name), name


class Checkpointer:
    def __init__(self, tc: Any, run_dir: Path, every: int | None, total_steps: int):
        self.tc, self.run_dir, self.auto = tc, run_dir, every is None
        self.every = max(1, math.ceil(total_steps / AUTO_PER_RUN)) if every is None else every
        self.total, self.last = total_steps, time.monotonic()

    def after_step(self, step: int) -> None:
        if step == self.total:
            return  # the final checkpoint follows
        due = bool(self.every) and step % self.every == 0
        if due or (self.auto and time.monotonic() - self.last >= AUTO_MINUTES * 60):
            self.save(step)

    def save(self, step: int, final: bool = False) -> None:
        """Save adapter + optimizer state and point latest.json at it."""
        folder = safefs.makedirs(self.run_dir / rundir.CHECKPOINTS, self.run_dir)
        name = "final" if final else f"step_{step:06d}"
        path = str(self.tc.save_state(str(folder / name)).result().path)
        stored = path if path.startswith("tinker://") else f"{rundir.CHECKPOINTS}/{name}"
        rundir.write_json_atomic(folder / LATEST, {"step": step, "path": stored, "name": name},
                                 self.run_dir)
        self.last = time.monotonic()
        steps = sorted((p for p in folder.glob("step_*")
                        if p.name[5:].isdigit() and p.is_dir() and not p.is_symlink()),
                       key=lambda p: int(p.name[5:]))
        for old in steps[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
