"""evsys: fine-tune and evaluate language models from a YAML config.

    import evsys_core
    result = evsys_core.run("examples/sdft_walkthrough/config.yaml")
    print(result.status, result.metrics, result.run_dir)
    group = evsys_core.run_group("examples/sdft_walkthrough/config.yaml", seeds=[0, 1, 2])

Heavy dependencies (torch, transformers, tinker) load only when a run starts.
`evsys_core.LocalServiceClient` is Tinker's ServiceClient served locally (docs/tinker-local.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

__version__ = "0.1.0"

if TYPE_CHECKING:
    from evsys_core.replicates import GroupResult
    from evsys_core.runner import RunResult


def run(config: Any, overrides: Sequence[str] = (), **kwargs: Any) -> "RunResult":
    """Run a config (a path or a RunConfig) with `KEY=VALUE` overrides; see `runner.run`."""
    from evsys_core.runner import run as _run

    return _run(config, overrides, **kwargs)


def run_group(config: Any, seeds: Sequence[int] | str, overrides: Sequence[str] = (),
              **kwargs: Any) -> "GroupResult":
    """Run a config once per seed as one replicate group; see `replicates.run_group`."""
    from evsys_core.replicates import run_group as _run_group

    return _run_group(config, seeds, overrides, **kwargs)


def __getattr__(name: str) -> Any:
    """`evsys_core.LocalServiceClient`: Tinker's ServiceClient on the local engine (imported on
    first use, so that `import evsys_core` stays light)."""
    if name == "LocalServiceClient":
        from evsys_core.backends.service import LocalServiceClient

        return LocalServiceClient
    raise AttributeError(f"module 'evsys_core' has no attribute {name!r}")
