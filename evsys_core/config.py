"""The YAML config: one pydantic model per section, and a loader whose errors say where.

    cfg = load_config("examples/sdft_walkthrough/config.yaml",
                      overrides=["algorithm.params.max_steps=5"])
    cfg.algorithm.params.topk, cfg.data.path (absolute), cfg.workspace, cfg.source_path

Every model forbids unknown keys. Loading collects every problem (not just the first) into
`ConfigError.issues`; each `Issue` names the file, line and column of the YAML node, the
dotted field path (`algorithm.params.topk`), what was given and what is valid. Relative
paths are resolved against the workspace (default: the current directory). The reference
for every key is docs/config.md.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from evsys_core.benchmarks import passk
from evsys_core.errors import ConfigError
from evsys_core.report import Issue  # noqa: F401 - importable from here too
from evsys_core.safefs import NAME_MAX_BYTES, SAFE_NAME, long_name
from evsys_core.yamlmarks import Loaded, Mark, YAMLProblem, load_with_marks

ALGORITHM_KINDS = ("sft", "sdft", "rl")


def _invalid(*errors: tuple[tuple[str | int, ...], str, Any]) -> ValidationError:
    """A ValidationError for (loc, message, value) triples, locs relative to the current model."""
    return ValidationError.from_exception_data(
        "config",
        [InitErrorDetails(type=PydanticCustomError("invalid", msg), loc=loc, input=value)
         for loc, msg, value in errors],
    )


def template_fields(template: str) -> list[str]:
    """The `{name}` placeholders of a str.format template; ValueError says what is malformed."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"template {template!r} is malformed ({e}); write braces as "
                         "{name}, and a literal brace as {{ or }}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"template {template!r} has placeholder {{{name}}}; placeholders "
                             "must be plain names such as {question} (a literal brace is {{ or }})")
        names.append(name)
    return names


def _check_template(template: str, allowed: Sequence[str] | None = None,
                    required: Sequence[str] = ()) -> str:
    try:
        names = template_fields(template)
    except ValueError as e:
        raise PydanticCustomError("invalid", str(e)) from None
    if allowed is not None:
        bad = [n for n in names if n not in allowed]
        if bad:
            raise PydanticCustomError(
                "invalid", f"unknown placeholder {{{bad[0]}}}; this template may use only "
                + ", ".join(f"{{{a}}}" for a in allowed))
    for r in required:
        if r not in names:
            raise PydanticCustomError("invalid", f"the template must contain {{{r}}}")
    return template


def _check_metric(metric: str) -> str:
    try:
        passk.parse_metric(metric)
    except ValueError as e:
        raise PydanticCustomError("invalid", str(e)) from None
    return metric


def _check_name(value: str | None) -> str | None:
    if value is not None and not SAFE_NAME.fullmatch(value):
        raise PydanticCustomError(
            "invalid", f"{value!r} is not a usable name; use letters, digits, '.', '_' and '-' "
            "(it becomes a directory or file name)")
    return value


def _check_path(value: Any) -> Any:
    """Refuse what no file system call can take (it would raise instead of saying "not found")."""
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("invalid", "the path is empty")
    if isinstance(value, str):
        if "\x00" in value:
            raise PydanticCustomError("invalid", "the path contains a NUL byte; remove it")
        long = long_name(value)
        if long is not None:
            raise PydanticCustomError(
                "invalid", f"the path has a name of {len(long.encode())} bytes ({long[:20]}...); file "
                f"systems take at most {NAME_MAX_BYTES}: use a shorter name")
    return value


Metric = Annotated[str, AfterValidator(_check_metric)]
SafeName = Annotated[str, AfterValidator(_check_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        """`metadata:` or `params:` with nothing under it means the defaults, not null."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in _EMPTY_OK}
        return data


# sections and lists that may be written empty (YAML null) to mean their default
_EMPTY_OK = frozenset({"model", "backend", "metadata", "callbacks", "params", "benchmark"})


# ---- model / backend / data -------------------------------------------------------------

class ModelConfig(_Section):
    name: str = Field("SmolLM2-135M-Instruct", min_length=1)

    _name_usable = field_validator("name", mode="before")(_check_path)  # it may be a path


class BackendConfig(_Section):
    kind: Literal["local", "tinker"] = "local"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class DataConfig(_Section):
    source_kind: Literal["jsonl", "csv"] | None = None  # None: from the file extension
    path: Path
    transform: str | None = None
    _config_dir: Path | None = PrivateAttr(None)

    _path_not_empty = field_validator("path", mode="before")(_check_path)

    @field_validator("transform")
    @classmethod
    def _transform_form(cls, v: str | None) -> str | None:
        if v is None:
            return v
        _check_path(v.replace(".", "/").replace(":", "/"))  # module:function names a file
        module, colon, fn = v.partition(":")
        ok = (all(p.isidentifier() for p in module.split(".")) and fn.isidentifier()) if colon \
            else bool(v.strip()) and not any(c.isspace() for c in v)
        if not ok:
            raise PydanticCustomError(
                "invalid", f"transform {v!r} is neither a registered name (my_transform) nor "
                "module:function (my_module:to_prompt_rows)")
        return v

    @model_validator(mode="after")
    def _infer_source_kind(self) -> "DataConfig":
        if self.source_kind is None:
            self.source_kind = "csv" if self.path.suffix.lower() == ".csv" else "jsonl"
        return self

    @property
    def config_dir(self) -> Path | None:
        """The directory of the config file this section came from (for module:function)."""
        return self._config_dir


# ---- algorithm ----------------------------------------------------------------------------

class TrainParams(_Section):
    """Parameters every algorithm takes."""

    learning_rate: float = Field(1e-4, gt=0, allow_inf_nan=False)
    max_steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1)
    lora_rank: int = Field(8, ge=1)
    checkpoint_every: int | None = Field(None, ge=0)  # None: evsys_core.checkpoints' default cadence
    user_template: str = "{question}"
    system_prompt: str | None = None
    grad_clip_norm: float = Field(0.0, ge=0, allow_inf_nan=False)

    @field_validator("user_template")
    @classmethod
    def _user_template(cls, v: str) -> str:
        return _check_template(v)


class SFTParams(TrainParams):
    max_length: int = Field(1024, ge=1)


class SDFTParams(TrainParams):
    topk: int = Field(20, ge=1)
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False)
    demo_template: str = "{prompt}\n\nHint: the answer is {expected}."
    kl: Literal["forward", "reverse"] = "forward"
    teacher: Literal["frozen", "ema"] = "frozen"
    ema_rate: float = Field(0.05, gt=0, le=1)
    skip_first_tokens: int = Field(0, ge=0)
    loss_reduction: Literal["sum", "sequence_mean"] = "sum"

    @field_validator("demo_template")
    @classmethod
    def _demo_template(cls, v: str) -> str:
        return _check_template(v, allowed=("prompt", "expected"), required=("expected",))


class RLParams(TrainParams):
    group_size: int = Field(4, ge=1)
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False)
    loss_fn: Literal["importance_sampling", "ppo"] = "importance_sampling"


PARAMS_BY_KIND: dict[str, type[TrainParams]] = {"sft": SFTParams, "sdft": SDFTParams, "rl": RLParams}


class AlgorithmConfig(_Section):
    kind: Literal["sft", "sdft", "rl"]
    params: SFTParams | SDFTParams | RLParams = Field(default_factory=dict, validate_default=True)

    @field_validator("params", mode="wrap")
    @classmethod
    def _params_for_kind(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        model = PARAMS_BY_KIND.get(info.data.get("kind"))  # type: ignore[arg-type]
        if model is None:
            return value  # the bad kind is reported on its own
        if isinstance(value, model):
            return value
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_unset=True)
        return model.model_validate(value)


# ---- benchmarks and callbacks -------------------------------------------------------------

class BenchmarkSpec(_Section):
    name: SafeName
    path: Path
    run_every: int | None = Field(None, ge=1)
    at_start: bool = True  # with run_every: also score the untrained model at step 0
    metrics: list[Metric] = Field(default_factory=lambda: list(passk.DEFAULT_METRICS), min_length=1)
    split: SafeName = "val"
    num_samples: int | None = Field(None, ge=1)  # None: the largest k among pass@k
    max_tokens: int = Field(passk.DEFAULT_MAX_TOKENS, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)  # None: 0 if 1 sample

    _path_not_empty = field_validator("path", mode="before")(_check_path)

    @model_validator(mode="after")
    def _samples(self) -> "BenchmarkSpec":
        short = passk.shortfalls(self.metrics, self.num_samples)
        if short:
            raise _invalid(*((("metrics", i), msg, self.metrics[i]) for i, msg in short))
        self.num_samples, self.temperature, self.max_tokens = passk.sampling_defaults(
            self.metrics, self.num_samples, self.temperature, self.max_tokens)
        return self


class Metadata(_Section):
    benchmark: list[BenchmarkSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> "Metadata":
        seen: dict[str, int] = {}
        dups = []
        for i, b in enumerate(self.benchmark):
            if b.name in seen:
                dups.append((("benchmark", i, "name"), f"benchmark name {b.name!r} is already "
                             f"used by benchmark {seen[b.name]}; names must be unique", b.name))
            seen.setdefault(b.name, i)
        if dups:
            raise _invalid(*dups)
        return self


class LocalLoggerParams(_Section):
    output_dir: Path = Path("outputs")
    run_name: SafeName | None = None  # None: the config file's stem

    _path_not_empty = field_validator("output_dir", mode="before")(_check_path)


class CallbackSpec(_Section):
    kind: Literal["local_logger"]
    params: LocalLoggerParams = Field(default_factory=LocalLoggerParams)


def _default_callbacks() -> list[CallbackSpec]:
    return [CallbackSpec(kind="local_logger")]


# ---- the whole config ---------------------------------------------------------------------

MAX_SEED = 2**63 - 1  # torch.manual_seed takes -2**63 .. 2**64 - 1; a signed 64-bit int fits everywhere


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    data: DataConfig
    algorithm: AlgorithmConfig
    metadata: Metadata = Field(default_factory=Metadata)
    callbacks: list[CallbackSpec] = Field(default_factory=_default_callbacks)
    seed: int = 0

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v <= MAX_SEED:
            raise PydanticCustomError("invalid", f"must be between 0 and 2**63 - 1 ({MAX_SEED}), got "
                                      f"{v}: the run seeds torch's random generator with it, which "
                                      "takes at most a 64-bit integer (and Tinker's API a signed one)")
        return v

    _source_path: Path | None = PrivateAttr(None)
    _source: str | None = PrivateAttr(None)
    _workspace: Path | None = PrivateAttr(None)
    _loaded: Loaded | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_logger(self) -> "RunConfig":
        loggers = [i for i, c in enumerate(self.callbacks) if c.kind == "local_logger"]
        if len(loggers) > 1:
            raise _invalid((("callbacks", loggers[1]), "only one local_logger is allowed (it "
                            "owns the run directory); remove this one", "local_logger"))
        params = self.algorithm.params
        if self.backend.kind == "tinker" and getattr(params, "teacher", None) == "ema":
            raise _invalid((("algorithm", "params", "teacher"), "teacher: ema needs backend.kind: "
                            "local (Tinker's API has no weight averaging); use teacher: frozen", "ema"))
        return self

    @property
    def source_path(self) -> Path | None:
        """The config file this was loaded from (absolute), if any."""
        return self._source_path

    @property
    def workspace(self) -> Path:
        """The directory relative paths were resolved against."""
        return self._workspace or Path.cwd()

    def local_logger(self) -> LocalLoggerParams | None:
        """The local_logger's params (output_dir, run_name), or None without one."""
        return next((c.params for c in self.callbacks if c.kind == "local_logger"), None)

    def issue(self, field: str, message: str, severity: Literal["error", "warning"] = "error") -> Issue:
        """An Issue located at `field` (dotted path) in the file this config came from."""
        mark = self._loaded.mark_for(parse_field_path(field)) if self._loaded else None
        file = mark.file if mark else (self._source or (str(self._source_path)
                                                         if self._source_path else None))
        return Issue(file=file, line=mark.line if mark else None,
                     column=mark.column if mark else None, field=field, message=message,
                     severity=severity)


# ---- loading ------------------------------------------------------------------------------

def parse_field_path(field: str) -> tuple[str | int, ...]:
    """`metadata.benchmark.0.path` or `metadata.benchmark[0].path` -> a path tuple."""
    parts: list[str | int] = []
    for part in re.split(r"\.|\[(\d+)\]", field):
        if part:
            parts.append(int(part) if part.isdigit() else part)
    return tuple(parts)


def dotted(path: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in path)


def load_config(path: str | Path, overrides: Sequence[str] = (),
                workspace: Path | None = None) -> RunConfig:
    """Read, validate and resolve a YAML config file; raise ConfigError listing every problem."""
    given = str(path)
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and workspace is not None \
            and (Path(workspace) / p).exists():
        p = Path(workspace) / p
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        issue = Issue(file=given, message=f"config file not found (looked at {p.absolute()}); "
                      "check the path, relative paths start from the current directory")
        raise ConfigError(str(issue), [issue]) from None
    except UnicodeDecodeError as e:
        before = e.object[:e.start]
        line = before.count(b"\n") + 1
        column = e.start - (before.rfind(b"\n") + 1) + 1
        issue = Issue(file=given, line=line, column=column,
                      message=f"not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot be decoded); "
                              "save the config as UTF-8")
        raise ConfigError(str(issue), [issue]) from None
    except OSError as e:
        issue = Issue(file=given, message=f"cannot read the config file: {e}")
        raise ConfigError(str(issue), [issue]) from None
    return parse_config_text(text, given, overrides, workspace, source_path=p.absolute())


def parse_config_text(text: str, source: str = "<config>", overrides: Sequence[str] = (),
                      workspace: Path | None = None, *,
                      source_path: Path | None = None) -> RunConfig:
    """Validate YAML text as a RunConfig; `source` names it in messages. Raises ConfigError.

    `source_path` is the file the text is (or will be) saved as: module:function transforms
    are looked for next to it, and a missing run_name defaults to its stem.
    """
    try:
        loaded = load_with_marks(text, source)
    except YAMLProblem as p:
        issue = Issue(file=p.mark.file, line=p.mark.line, column=p.mark.column, message=p.message)
        raise ConfigError(_summary(source, [issue]), [issue]) from None
    issues = [Issue(file=m.file, line=m.line, column=m.column, field=dotted(path), message=msg)
              for path, m, msg in loaded.problems]
    if loaded.data is None:
        loaded.data = {}
        loaded.value_marks[()] = Mark(source, 1, 1)
    if not isinstance(loaded.data, dict):
        m = loaded.value_marks.get(()) or Mark(source)
        issue = Issue(file=m.file, line=m.line, column=m.column,
                      message=f"the config must be a mapping of sections (model, backend, data, "
                      f"algorithm, metadata, callbacks, seed), got a {type(loaded.data).__name__}")
        raise ConfigError(_summary(source, [issue]), [issue])
    for item in overrides:
        issues.extend(_apply_override(loaded, item))
    cfg: RunConfig | None = None
    try:
        cfg = RunConfig.model_validate(loaded.data)
    except ValidationError as e:
        from evsys_core.config_messages import issues_from_validation

        issues.extend(issues_from_validation(e, loaded))
    if issues or cfg is None:
        issues.sort(key=lambda i: (i.file != source, i.line or 0, i.column or 0))
        raise ConfigError(_summary(source, issues), issues)
    cfg._source = source
    cfg._source_path = source_path
    cfg._loaded = loaded
    if source_path is not None:
        cfg.data._config_dir = source_path.parent
        logger = cfg.local_logger()
        if logger is not None and logger.run_name is None:
            logger.run_name = re.sub(r"[^A-Za-z0-9._-]", "_", source_path.stem).lstrip("._-") or "run"
    return resolve_paths(cfg, workspace)


def resolve_paths(cfg: RunConfig, workspace: Path | None = None) -> RunConfig:
    """Make every relative path in `cfg` absolute against `workspace` (default: cwd); in place."""
    ws = Path(os.path.normpath(Path(workspace or cfg._workspace or Path.cwd()).expanduser().absolute()))
    cfg._workspace = ws

    def absolute(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(ws / p))

    cfg.data.path = absolute(cfg.data.path)
    for b in cfg.metadata.benchmark:
        b.path = absolute(b.path)
    for c in cfg.callbacks:
        c.params.output_dir = absolute(c.params.output_dir)
    return cfg


def config_to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (every key, defaults filled in); it loads back unchanged."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True,
                          width=100)


def _summary(source: str, issues: Sequence[Issue]) -> str:
    n = len(issues)
    head = f"invalid config {source} ({n} problem{'s' if n != 1 else ''}):"
    return "\n".join([head] + [f"  {i}" for i in issues])


def _apply_override(loaded: Loaded, item: str) -> list[Issue]:
    """Apply one `KEY=VALUE` (VALUE read as a YAML value) to the loaded data."""
    label = f"--set {item}"
    key, eq, text = item.partition("=")
    key = key.strip()
    if not eq or not key:
        return [Issue(file=label, field=key, message="expected KEY=VALUE, for example "
                      "--set algorithm.params.max_steps=5")]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [Issue(file=label, field=key, message=f"VALUE is not a valid YAML value: "
                      f"{getattr(e, 'problem', e)}; quote it if it is a string")]
    problem = loaded.set_value(parse_field_path(key), value, Mark(label))
    return [Issue(file=label, field=key, message=problem)] if problem else []
