"""Tools over configs and benchmarks: validate, write, and list what the workspace holds."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Iterator

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from evsys_core import rundir, safefs
from evsys_core.errors import ConfigError

from .. import budget, paths
from ..boundary import tool_boundary
from ..models import FileList, ValidationReport, WriteConfigResult
from .base import Base, ConfigPath, Offset

MAX_YAML_CHARS = 200_000
MAX_ISSUES = 40          # issues per report; the rest are counted in its note
MAX_WALK = 20_000        # directory entries a listing looks at
Under = Annotated[str | None, Field(max_length=1024, description="only under this folder (relative to the workspace)")]
Limit = Annotated[int, Field(ge=1, le=200, description="entries per page (1-200)")]


class ConfigTools(Base):

    def _validate(self, path: Path, deep: bool, overrides: list[str] | None = None) -> ValidationReport:
        """`evsys validate --json` for a confined path, shown relative to the workspace, bounded.
        A deep check runs the config's own code, so it runs in a child process (deepcheck.py)."""
        if deep:
            from ..deepcheck import deep_validate

            data = deep_validate(self.workspace, path, overrides or ())
        else:
            from evsys_core.validate import validate

            data = validate(path, deep=False, workspace=self.workspace, overrides=overrides or ()).model_dump(mode="json")
        total = len(data["errors"]) + len(data["warnings"])
        room = budget.FIT_CHARS
        for key in ("errors", "warnings"):
            issues = [{**i, "message": budget.text(i.get("message"), 1_000), "file": budget.text(i.get("file"), 500),
                       "field": budget.text(i.get("field"), budget.NAME_CHARS) or ""} for i in data[key][:MAX_ISSUES]]
            data[key] = issues[:budget.fit(issues, room)]
            room -= budget.size(data[key])
        out = ValidationReport.model_validate(data)
        out.config_path = self._rel(path)
        shown = len(out.errors) + len(out.warnings)
        if shown < total:
            out.note = f"{total - shown} more issues not shown; fix these and validate again"
        return out

    @staticmethod
    def _issues_text(report: ValidationReport) -> str:
        lines = []
        for i in report.errors:
            where = ":".join(str(x) for x in (i.file, i.line, i.column) if x is not None)
            lines.append("- " + ": ".join(x for x in (where, i.field, i.message) if x))
        return "\n".join(lines) + (f"\n({report.note})" if report.note else "")

    @tool_boundary
    def validate_config(
        self,
        path: ConfigPath,
        deep: Annotated[bool, Field(description="also load data and tasks and check every verifier, the model "
                                                "and the output directory")] = False,
    ) -> ValidationReport:
        """The `evsys validate --json` report of a config: ok, and every issue with file:line:column
        (at most 40 shown, under ~45,000 characters)."""
        cfg = paths.config_path(self.workspace, path, must_exist=True)
        return self._validate(cfg, deep)

    def _inside_a_run(self, target: Path) -> Path | None:
        """The run directory `target` would be written in, if any: run dirs are the record of
        what ran, append-only for agents (a config replaced there would rewrite history)."""
        for d in [target.parent, *target.parent.parents]:
            if d == self.workspace or not d.is_relative_to(self.workspace):
                return None
            if (d / rundir.RUN_JSON).exists():
                return d
        return None

    @tool_boundary
    def write_config(
        self,
        path: ConfigPath,
        yaml_text: Annotated[str, Field(min_length=1, max_length=MAX_YAML_CHARS, description=(
            "the whole YAML config (see docs/config.md); it is validated before anything is written"))],
        overwrite: Annotated[bool, Field(description="replace an existing config file (never one inside a "
                                                     "run directory)")] = False,
    ) -> WriteConfigResult:
        """Validate a YAML config and, only if it is valid, write it atomically inside the workspace
        (experiments/<name>.yaml for a bare name). Never writes inside a run directory. Answers with its
        validation report (under ~45,000 characters)."""
        paths.check_text(yaml_text, "yaml_text", MAX_YAML_CHARS)
        target = paths.config_path(self.workspace, path, must_exist=False)
        run_dir = self._inside_a_run(target)
        if run_dir is not None:
            raise ToolError(f"{self._rel(target)} is inside the run directory {self._rel(run_dir)}; run "
                            "directories record what ran and are not rewritten. Write the config under "
                            "experiments/ instead")
        existed = target.exists()
        if existed and not overwrite:
            raise ToolError(f"{self._rel(target)} already exists; pass overwrite=true to replace it, "
                            "or choose a new name")
        if target.exists() and not target.is_file():
            raise ToolError(f"{self._rel(target)} exists and is not a file; choose another path")
        created = [d for d in [target.parent, *target.parent.parents] if not d.exists()]
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.{threading.get_ident()}.candidate{target.suffix}")
        written = False
        try:
            safefs.makedirs(target.parent, self.workspace)  # no link out of the workspace on the way
            safefs.write_new(tmp, yaml_text, self.workspace)
            report = self._renamed(self._validate(tmp, deep=False), tmp, target)
            if not report.ok:
                raise ToolError(f"{self._rel(target)} is not valid, nothing was written:\n"
                                f"{self._issues_text(report)}\nfix these and call write_config again")
            self._confine_config(self._parse(yaml_text, target), self._rel(target), "written")
            os.replace(tmp, target)  # replaces a link at the target, never writes through it
            written = True
        finally:
            tmp.unlink(missing_ok=True)
            if not written:  # leave nothing behind, not even the folders made for it
                for d in created:
                    with contextlib.suppress(OSError):
                        d.rmdir()
        return WriteConfigResult(path=self._rel(target), written=True, overwritten=existed, report=report)

    def _parse(self, yaml_text: str, target: Path) -> Any:
        from evsys_core.config import parse_config_text

        try:
            return parse_config_text(yaml_text, self._rel(target), workspace=self.workspace, source_path=target)
        except ConfigError as e:
            raise ToolError(f"{self._rel(target)} is not valid, nothing was written:\n{e}") from e

    def _confine_config(self, cfg: Any, source: str, verb: str) -> None:
        """Every path a config names (data, benchmarks, output) must stay inside the workspace."""
        fields = [("data.path", "data.path", cfg.data.path)]
        fields += [(f"metadata.benchmark[{i}].path", f"metadata.benchmark.{i}.path", b.path)
                   for i, b in enumerate(cfg.metadata.benchmark)]
        fields += [(f"callbacks[{i}].params.output_dir", f"callbacks.{i}.params.output_dir", c.params.output_dir)
                   for i, c in enumerate(cfg.callbacks)]
        for name, dotted, value in fields:
            resolved = (self.workspace / Path(value)).resolve()
            if not resolved.is_relative_to(self.workspace):
                raise ToolError(f"{self._where(cfg, dotted, source)}: {name} = {value} resolves outside the "
                                f"workspace; nothing was {verb}. Use a path inside the workspace.")
        model = str(cfg.model.name)
        if not self._model_inside(model):
            raise ToolError(f"{self._where(cfg, 'model.name', source)}: model.name = {model} is a path outside the "
                            f"workspace; nothing was {verb}. Use a model name or a model directory inside the workspace.")

    @staticmethod
    def _where(cfg: Any, field: str, source: str) -> str:
        """file:line:column of a config field, as validate reports it."""
        issue = cfg.issue(field, "")
        where = ":".join(str(x) for x in (issue.file, issue.line, issue.column) if x is not None)
        return where or source

    def _model_inside(self, model: str) -> bool:
        """False when `model` is a path (or a symlink inside the workspace) leading outside it."""
        p = self.workspace / Path(model).expanduser()
        if model.startswith(("/", "~", ".")) or ".." in Path(model).parts or os.path.lexists(p):
            return p.resolve().is_relative_to(self.workspace)
        return True  # a model name (a hub id, the default model), not a path

    def _renamed(self, report: ValidationReport, tmp: Path, target: Path) -> ValidationReport:
        """Issues name the file the agent asked for, not the candidate file."""
        names = {str(tmp), tmp.name, self._rel(tmp)}
        text = report.model_dump_json()
        for n in sorted(names, key=len, reverse=True):
            text = text.replace(json.dumps(n)[1:-1], json.dumps(self._rel(target))[1:-1])
        return ValidationReport.model_validate_json(text)

    # --- listing what the workspace holds ---------------------------------------------

    def _walk(self, under: str | None) -> Iterator[tuple[Path, list[str], list[str]]]:
        """Folders of the workspace (or `under`), skipping hidden ones and run directories,
        without following symlinks, at most MAX_WALK entries."""
        root = paths.resolve_in_workspace(self.workspace, under, what="under") if under else self.workspace
        seen = 0
        for d, dirs, files in os.walk(root, followlinks=False):
            seen += len(dirs) + len(files)
            if seen > MAX_WALK:
                return
            if rundir.RUN_JSON in files:
                dirs[:] = []
                continue
            dirs[:] = sorted(x for x in dirs if not x.startswith("."))
            yield Path(d), dirs, sorted(files)

    def _page(self, items: list[dict[str, Any]], offset: int, limit: int) -> FileList:
        page = items[offset:offset + limit]
        kept = budget.fit(page, budget.FIT_CHARS)
        end = offset + kept
        return FileList(items=page[:kept], offset=offset, next_offset=end if end < len(items) else None,
                        total=len(items))

    @tool_boundary
    def list_configs(self, under: Under = None, offset: Offset = 0, limit: Limit = 50) -> FileList:
        """YAML configs in the workspace (not the copies inside run directories): path, bytes, modified
        time; ~120 characters each, paged."""
        items = []
        for d, _, files in self._walk(under):
            for f in files:
                p = d / f
                if p.suffix.lower() in paths.CONFIG_SUFFIXES and not p.is_symlink():
                    st = p.stat()
                    items.append({"path": self._rel(p), "bytes": st.st_size, "modified": round(st.st_mtime, 1)})
        return self._page(items, offset, limit)

    @tool_boundary
    def list_benchmarks(self, under: Under = None, offset: Offset = 0, limit: Limit = 50) -> FileList:
        """Benchmark directories in the workspace (folders holding tasks.jsonl): path and task count;
        ~100 characters each, paged. Score one with score_benchmark or name it in a config's
        metadata.benchmark."""
        items = []
        for d, _, files in self._walk(under):
            if "tasks.jsonl" in files and not (d / "tasks.jsonl").is_symlink():
                items.append({"path": self._rel(d), "tasks": _count_lines(d / "tasks.jsonl")})
        return self._page(items, offset, limit)


def _count_lines(path: Path, limit: int = 8 * 2**20) -> int | None:
    """Non-blank lines of a file, reading at most `limit` bytes (None when larger)."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        return None
    return sum(1 for line in data.splitlines() if line.strip())
