"""What an algorithm's loop is handed: the clients, the data in batches, and the per-step chores.

An algorithm only decides *what* to train on each step; `TrainContext` does the rest the
same way for all of them: batching and epochs (deterministic, so a resumed run sees the same
batches), the pipelined forward_backward + optim_step, a sampling client for the current
weights, in-loop benchmarks, checkpoints, progress, and a clean stop on SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


@dataclass
class TrainContext:
    params: Any                      # the algorithm's validated params (config.algorithm.params)
    training_client: Any             # Tinker's TrainingClient surface (local or remote)
    rows: Sequence[Any]              # typed examples (evsys_core.data)
    seed: int = 0
    task_dir: Path | None = None     # where a task's relative verifier paths resolve
    start_step: int = 0              # > 0 when resuming
    on_step_end: Callable[[int, dict[str, float]], None] = lambda step, metrics: None
    on_log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None
    should_stop: Callable[[], bool] = lambda: False
    _sampler: Any = field(default=None, repr=False)

    @property
    def tokenizer(self) -> Any:
        return self.training_client.get_tokenizer()

    # --- the schedule -------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return max(1, min(self.params.batch_size, len(self.rows)))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    @property
    def total_steps(self) -> int:
        if self.params.max_steps:
            return self.params.max_steps
        return (self.params.epochs or 1) * self.steps_per_epoch

    def batch_at(self, step: int) -> list[Any]:
        """The batch of a 1-based step: a per-epoch shuffle seeded by (seed, epoch)."""
        epoch, i = divmod(step - 1, self.steps_per_epoch)
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return [self.rows[j] for j in order[i * self.batch_size:(i + 1) * self.batch_size]]

    def batches(self) -> Iterator[tuple[int, list[Any]]]:
        for step in range(self.start_step + 1, self.total_steps + 1):
            if self.should_stop():
                return
            yield step, self.batch_at(step)

    # --- the primitives, used the way Tinker recommends ---------------------------------
    def adam_params(self) -> Any:
        from tinker import types

        return types.AdamParams(
            learning_rate=self.params.learning_rate,
            grad_clip_norm=self.params.grad_clip_norm,
        )

    def train_step(self, data: list[Any], loss_fn: str, loss_fn_config: dict | None = None) -> Any:
        """forward_backward then optim_step, both submitted before either is waited on."""
        fwd_bwd = self.training_client.forward_backward(data, loss_fn, loss_fn_config)
        optim = self.training_client.optim_step(self.adam_params())
        output = fwd_bwd.result()
        optim.result()
        self._sampler = None  # the weights changed
        return output

    def sampler(self) -> Any:
        """A sampling client for the current weights (reused until the next train_step)."""
        if self._sampler is None:
            self._sampler = self.training_client.save_weights_and_get_sampling_client()
        return self._sampler

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Log training metrics that are not a step's own (e.g. a measurement at step 0)."""
        self.on_log(step, {f"train/{k}": float(v) for k, v in metrics.items()})

    def end_step(self, step: int, metrics: dict[str, float]) -> None:
        """Log the step's training metrics; the runner evaluates and checkpoints from here."""
        self.on_step_end(step, {f"train/{k}": float(v) for k, v in metrics.items()})
