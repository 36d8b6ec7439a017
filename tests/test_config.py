"""The YAML config: the seed loads verbatim; every bad config is reported with its file, line,
field path and a fix, by `load_config` and by `evsys validate` (exit code 1)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from evsys_core import cli
from evsys_core.config import (
    ConfigError,
    RLParams,
    RunConfig,
    SDFTParams,
    SFTParams,
    config_to_yaml,
    load_config,
    parse_config_text,
    template_fields,
)

REPO = Path(__file__).resolve().parents[1]

# The config block of the specification evsys was built from, byte for byte (comments included).
SEED = """\
model: { name: Qwen/Qwen3.5-4B }          # or SmolLM2-135M-Instruct, a local HF dir, a .gguf
backend: { kind: tinker }                 # tinker | local
data:
  source_kind: jsonl                      # jsonl first; csv and others later
  path: examples/sdft_walkthrough/data/train.jsonl
  # transform: my_transform              # a @register_transform name, or module:function
algorithm:
  kind: sdft                              # sft | sdft | rl
  params: { learning_rate: 1.0e-4, max_steps: 2, batch_size: 1, lora_rank: 1,
            topk: 20, user_template: "{question}" }
metadata:
  benchmark:
    - { name: val, path: examples/sdft_walkthrough/data/val, run_every: 1,
        metrics: [pass@1], split: val }
callbacks:
  - { kind: local_logger, params: { output_dir: examples/sdft_walkthrough/outputs,
                                    run_name: sdft_capitals } }
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path, overrides=()) -> list:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, workspace=path.parent)
    return info.value.issues


def validate_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["validate", *argv])
    return code, capsys.readouterr().out


# ---- the seed ----------------------------------------------------------------------------

def test_seed_yaml_loads_verbatim(tmp_path, examples_ws):
    cfg = load_config(write(tmp_path, SEED, "seed.yaml"), workspace=examples_ws)
    assert cfg.model.name == "Qwen/Qwen3.5-4B"
    assert cfg.backend.kind == "tinker"
    assert cfg.data.source_kind == "jsonl"
    assert cfg.data.path == examples_ws / "examples/sdft_walkthrough/data/train.jsonl"
    assert cfg.data.transform is None
    assert cfg.algorithm.kind == "sdft"
    p = cfg.algorithm.params
    assert isinstance(p, SDFTParams)
    assert (p.learning_rate, p.max_steps, p.batch_size, p.lora_rank, p.topk, p.user_template) == \
        (1e-4, 2, 1, 1, 20, "{question}")
    [bench] = cfg.metadata.benchmark
    assert (bench.name, bench.run_every, bench.metrics, bench.split) == ("val", 1, ["pass@1"], "val")
    assert bench.path == examples_ws / "examples/sdft_walkthrough/data/val"
    assert bench.num_samples == 1 and bench.temperature == 0.0
    [cb] = cfg.callbacks
    assert cb.kind == "local_logger"
    assert cb.params.output_dir == examples_ws / "examples/sdft_walkthrough/outputs"
    assert cb.params.run_name == "sdft_capitals"
    assert cfg.workspace == examples_ws
    assert cfg.source_path == tmp_path / "seed.yaml"


def test_tinker_walkthrough_config_is_the_seed_verbatim():
    assert (REPO / "examples/sdft_walkthrough/config.tinker.yaml").read_text() == SEED


def test_local_walkthrough_config(examples_ws):
    cfg = load_config(examples_ws / "examples/sdft_walkthrough/config.yaml", workspace=examples_ws)
    assert (cfg.model.name, cfg.backend.kind, cfg.algorithm.kind) == \
        ("SmolLM2-135M-Instruct", "local", "sdft")
    p = cfg.algorithm.params
    assert (p.lora_rank, p.batch_size, p.max_steps, p.topk) == (8, 4, 2, 20)
    assert cfg.metadata.benchmark[0].run_every == 1
    assert cfg.local_logger().run_name == "sdft_capitals"
    assert cfg.local_logger().output_dir == examples_ws / "examples/sdft_walkthrough/outputs"


# ---- defaults, kinds, paths ---------------------------------------------------------------

def test_defaults_of_a_minimal_config(tmp_path):
    cfg = load_config(write(tmp_path, "data: {path: d.jsonl}\nalgorithm: {kind: sft}\n",
                            "my-exp.yaml"))
    assert cfg.model.name == "SmolLM2-135M-Instruct"
    assert (cfg.backend.kind, cfg.backend.device, cfg.seed) == ("local", "auto", 0)
    assert isinstance(cfg.algorithm.params, SFTParams)
    p = cfg.algorithm.params
    assert (p.learning_rate, p.max_steps, p.epochs, p.batch_size, p.lora_rank) == (1e-4, None, None, 4, 8)
    assert (p.checkpoint_every, p.user_template, p.system_prompt, p.max_length) == (None, "{question}", None, 1024)
    assert cfg.metadata.benchmark == []
    # one local_logger by default, named after the config file, in <workspace>/outputs
    assert cfg.local_logger().run_name == "my-exp"
    assert cfg.local_logger().output_dir == Path.cwd() / "outputs"


@pytest.mark.parametrize("kind,model", [("sft", SFTParams), ("sdft", SDFTParams), ("rl", RLParams)])
def test_params_are_validated_by_the_kind(tmp_path, kind, model):
    cfg = load_config(write(tmp_path, f"data: {{path: d.jsonl}}\nalgorithm: {{kind: {kind}}}\n"))
    assert type(cfg.algorithm.params) is model


def test_sdft_and_rl_defaults(tmp_path):
    sdft = load_config(write(tmp_path, "data: {path: d}\nalgorithm: {kind: sdft}\n")).algorithm.params
    assert (sdft.topk, sdft.max_tokens, sdft.temperature, sdft.kl, sdft.teacher) == \
        (20, 64, 1.0, "forward", "frozen")
    assert (sdft.ema_rate, sdft.skip_first_tokens, sdft.loss_reduction) == (0.05, 0, "sum")
    assert sdft.demo_template == "{prompt}\n\nHint: the answer is {expected}."
    rl = load_config(write(tmp_path, "data: {path: d}\nalgorithm: {kind: rl}\n")).algorithm.params
    assert (rl.group_size, rl.max_tokens, rl.temperature, rl.loss_fn) == \
        (4, 64, 1.0, "importance_sampling")


def test_relative_paths_resolve_against_the_workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    text = """\
        data: {path: data/train.jsonl}
        algorithm: {kind: sft}
        metadata: {benchmark: [{name: b, path: bench/b, metrics: [pass@4, mean_score]}]}
        callbacks: [{kind: local_logger, params: {output_dir: runs, run_name: x}}]
        """
    cfg = load_config(write(tmp_path, text), workspace=ws)
    assert cfg.workspace == ws
    assert cfg.data.path == ws / "data/train.jsonl"
    assert cfg.metadata.benchmark[0].path == ws / "bench/b"
    assert cfg.local_logger().output_dir == ws / "runs"
    # num_samples defaults to the largest k, and sampling is then not greedy
    assert cfg.metadata.benchmark[0].num_samples == 4
    assert cfg.metadata.benchmark[0].temperature == 1.0
    absolute = tmp_path / "elsewhere.jsonl"
    cfg = load_config(write(tmp_path, f"data: {{path: {absolute}}}\nalgorithm: {{kind: sft}}\n"),
                      workspace=ws)
    assert cfg.data.path == absolute


def test_source_kind_follows_the_file_extension(tmp_path):
    cfg = load_config(write(tmp_path, "data: {path: rows.csv}\nalgorithm: {kind: sft}\n"))
    assert cfg.data.source_kind == "csv"


def test_overrides_are_yaml_values(tmp_path, examples_ws):
    cfg = load_config(write(tmp_path, SEED), workspace=examples_ws, overrides=[
        "algorithm.params.max_steps=5",
        "algorithm.params.learning_rate=3e-5",
        "metadata.benchmark.0.metrics=[pass@1, pass@2]",
        "metadata.benchmark[0].run_every=4",
        "data.transform=my_transform",
        "model.name=SmolLM2-135M-Instruct",
        "seed=7",
    ])
    assert cfg.algorithm.params.max_steps == 5
    assert cfg.algorithm.params.learning_rate == 3e-5
    assert cfg.metadata.benchmark[0].metrics == ["pass@1", "pass@2"]
    assert cfg.metadata.benchmark[0].run_every == 4
    assert cfg.data.transform == "my_transform"
    assert cfg.model.name == "SmolLM2-135M-Instruct"
    assert cfg.seed == 7


def test_config_to_yaml_round_trips(tmp_path, examples_ws):
    cfg = load_config(write(tmp_path, SEED), workspace=examples_ws)
    text = config_to_yaml(cfg)
    again = parse_config_text(text, "resolved.yaml", workspace=tmp_path)
    assert again.model_dump() == cfg.model_dump()
    assert yaml.safe_load(text)["algorithm"]["params"]["topk"] == 20


def test_parse_config_text_names_its_source():
    with pytest.raises(ConfigError) as info:
        parse_config_text("data: {path: x}\nalgorithm: {kind: sft, params: {topk: 3}}\n",
                          "<mcp write_config>")
    [issue] = info.value.issues
    assert (issue.file, issue.line, issue.field) == ("<mcp write_config>", 2, "algorithm.params.topk")


def test_template_fields():
    assert template_fields("Q: {question} ({context})") == ["question", "context"]
    assert template_fields("literal {{braces}}") == []
    with pytest.raises(ValueError, match="malformed"):
        template_fields("{question")
    with pytest.raises(ValueError, match="plain names"):
        template_fields("{}")


# ---- bad configs: field path, line, column, message, exit code ---------------------------

BASE = """\
model: {name: SmolLM2-135M-Instruct}
data:
  path: data/train.jsonl
algorithm:
  kind: sdft
  params:
    learning_rate: 1.0e-4
    max_steps: 2
    topk: 20
metadata:
  benchmark:
    - name: val
      path: data/val
      metrics: [pass@1]
callbacks:
  - kind: local_logger
    params: {output_dir: outputs, run_name: exp}
"""


def edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


BAD_CONFIGS = [
    # id, YAML text, field, line, column, message fragment
    ("wrong-type", edit("max_steps: 2", "max_steps: two"),
     "algorithm.params.max_steps", 8, 16, "must be a valid integer"),
    ("unknown-key-suggests", edit("learning_rate:", "lerning_rate:"),
     "algorithm.params.lerning_rate", 7, 5, "did you mean 'learning_rate'?"),
    ("unknown-section-suggests", edit("metadata:", "metdata:"),
     "metdata", 10, 1, "did you mean 'metadata'?"),
    ("unknown-algorithm-kind", edit("kind: sdft", "kind: dpo"),
     "algorithm.kind", 5, 9, "valid values: sft, sdft, rl"),
    ("algorithm-kind-typo", edit("kind: sdft", "kind: sdf"),
     "algorithm.kind", 5, 9, "did you mean 'sdft'?"),
    ("negative-learning-rate", edit("1.0e-4", "-1.0e-4"),
     "algorithm.params.learning_rate", 7, 20, "must be greater than 0"),
    ("zero-topk", edit("topk: 20", "topk: 0"),
     "algorithm.params.topk", 9, 11, "greater than or equal to 1"),
    ("param-of-another-kind", edit("kind: sdft", "kind: sft"),
     "algorithm.params.topk", 9, 5, "unknown key 'topk'"),
    ("missing-required-section", BASE.replace("algorithm:\n  kind: sdft\n  params:\n"
                                              "    learning_rate: 1.0e-4\n    max_steps: 2\n"
                                              "    topk: 20\n", ""),
     "algorithm", 1, 1, "required section 'algorithm' is missing"),
    ("missing-data-path", edit("  path: data/train.jsonl", "  transform: t"),
     "data.path", 3, 3, "required key 'path' is missing"),
    ("bad-yaml-syntax", edit("metrics: [pass@1]", "metrics: [pass@1"),
     "", 15, 10, "flow sequence that started at line 14, column 16"),
    ("bad-metric", edit("[pass@1]", "[pass@1, accuracy]"),
     "metadata.benchmark.0.metrics.1", 14, 25, "unknown metric 'accuracy'"),
    ("pass-at-k-above-num-samples", edit("[pass@1]", "[pass@1, pass@8]\n      num_samples: 4"),
     "metadata.benchmark.0.metrics.1", 14, 25, "pass@8 needs at least 8 samples"),
    ("metrics-not-a-list", edit("[pass@1]", "pass@1"),
     "metadata.benchmark.0.metrics", 14, 16, "expected a list"),
    ("unknown-backend", edit("model: {name: SmolLM2-135M-Instruct}",
                             "model: {name: SmolLM2-135M-Instruct}\nbackend: {kind: remote}"),
     "backend.kind", 2, 17, "valid values: local, tinker"),
    ("section-not-a-mapping", edit("model: {name: SmolLM2-135M-Instruct}", "model: Qwen/Qwen3-8B"),
     "model", 1, 8, "expected a mapping (keys: name)"),
    ("malformed-user-template", edit("topk: 20", "topk: 20\n    user_template: 'Q: {question'"),
     "algorithm.params.user_template", 10, 20, "malformed"),
    ("demo-template-unknown-placeholder",
     edit("topk: 20", "topk: 20\n    demo_template: '{prompt} {answer} {expected}'"),
     "algorithm.params.demo_template", 10, 20, "unknown placeholder {answer}"),
    ("duplicate-benchmark-name", edit("      metrics: [pass@1]\n",
                                      "      metrics: [pass@1]\n    - {name: val, path: x}\n"),
     "metadata.benchmark.1.name", 15, 14, "already used by benchmark 0"),
    ("duplicate-key", edit("    topk: 20\n", "    topk: 20\n    topk: 10\n"),
     "algorithm.params.topk", 10, 5, "duplicate key 'topk' (first given at line 9)"),
    ("run-name-with-slash", edit("run_name: exp", "run_name: a/b"),
     "callbacks.0.params.run_name", 17, 45, "not a usable name"),
    ("two-local-loggers", BASE + "  - kind: local_logger\n",
     "callbacks.1", 18, 5, "only one local_logger"),
    ("unknown-callback-kind", edit("- kind: local_logger", "- kind: wandb"),
     "callbacks.0.kind", 16, 11, "valid values: local_logger"),
    ("negative-seed-type", BASE + "seed: [1]\n",
     "seed", 18, 7, "must be a valid integer"),
    ("bad-device", edit("model: {name: SmolLM2-135M-Instruct}",
                        "model: {name: SmolLM2-135M-Instruct}\nbackend: {device: gpu}"),
     "backend.device", 2, 19, "valid values: auto, cpu, cuda"),
    ("bad-transform-form", edit("  path: data/train.jsonl", "  path: data/train.jsonl\n  transform: 'a b'"),
     "data.transform", 4, 14, "neither a registered name"),
]


@pytest.mark.parametrize("text,field,line,column,fragment",
                         [case[1:] for case in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_located(tmp_path, capsys, text, field, line, column, fragment):
    path = write(tmp_path, text)
    issues = errors_of(path)
    match = [i for i in issues if i.field == field and fragment in i.message]
    assert match, f"no issue for {field!r} with {fragment!r} in {[str(i) for i in issues]}"
    issue = match[0]
    assert (issue.file, issue.line, issue.column) == (str(path), line, column)
    assert issue.severity == "error"
    code, out = validate_cli(capsys, str(path))
    assert code == 1
    prefix = f"{path}:{line}:{column}: " + (f"{field}: " if field else "")
    assert prefix + issue.message in out.splitlines()
    assert out.splitlines()[-1].startswith(f"{path}: invalid")


def test_all_problems_are_reported_not_just_the_first(tmp_path):
    text = edit("max_steps: 2", "max_steps: two").replace("topk: 20", "topkk: 20") \
        .replace("[pass@1]", "[pass@x]")
    issues = errors_of(write(tmp_path, text))
    assert [(i.field, i.line) for i in issues] == [
        ("algorithm.params.max_steps", 8),
        ("algorithm.params.topkk", 9),
        ("metadata.benchmark.0.metrics.0", 14),
    ]
    assert "did you mean 'topk'?" in issues[1].message


def test_unknown_key_lists_the_valid_keys(tmp_path):
    [issue] = errors_of(write(tmp_path, edit("model: {name:", "model: {nmae:")))
    assert issue.message == "unknown key 'nmae' (did you mean 'name'?); valid keys here: name"


def test_top_level_must_be_a_mapping(tmp_path):
    [issue] = errors_of(write(tmp_path, "- data\n- algorithm\n"))
    assert (issue.line, issue.column) == (1, 1)
    assert "must be a mapping of sections" in issue.message and "got a list" in issue.message


def test_empty_config_names_the_missing_sections(tmp_path):
    issues = errors_of(write(tmp_path, "# nothing yet\n"))
    assert sorted(i.field for i in issues) == ["algorithm", "data"]


def test_missing_config_file(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    [issue] = errors_of(path)
    assert issue.file == str(path) and "config file not found" in issue.message
    code, out = validate_cli(capsys, str(path))
    assert code == 1 and "config file not found" in out


def test_bad_override_value_is_located_at_the_set_flag(tmp_path, capsys):
    path = write(tmp_path, BASE)
    issues = errors_of(path, ["algorithm.params.batch_size=0"])
    [issue] = issues
    assert issue.file == "--set algorithm.params.batch_size=0"
    assert issue.field == "algorithm.params.batch_size"
    assert "greater than or equal to 1" in issue.message
    code, out = validate_cli(capsys, str(path), "--set", "algorithm.params.batch_size=0")
    assert code == 1
    assert "--set algorithm.params.batch_size=0: algorithm.params.batch_size: must be" in out


@pytest.mark.parametrize("item,fragment", [
    ("algorithm.params.max_steps", "expected KEY=VALUE"),
    ("metadata.benchmark.3.run_every=2", "metadata.benchmark is a list of 1 items"),
    ("model.name.x=2", "model.name is a str, not a mapping"),
    ("algorithm.params.topk=[1", "not a valid YAML value"),
])
def test_malformed_overrides(tmp_path, item, fragment):
    [issue] = errors_of(write(tmp_path, BASE), [item])
    assert issue.file == f"--set {item}" and fragment in issue.message


def test_config_error_message_lists_every_issue(tmp_path):
    path = write(tmp_path, edit("max_steps: 2", "max_steps: -3").replace("topk: 20", "topk: x"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"invalid config {path} (2 problems):")
    assert f"{path}:8:16: algorithm.params.max_steps:" in text
    assert f"{path}:9:11: algorithm.params.topk:" in text


def test_runconfig_issue_locates_a_field(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    issue = cfg.issue("metadata.benchmark.0.path", "no such directory")
    assert (issue.file, issue.line, issue.column) == (str(tmp_path / "config.yaml"), 13, 13)
    # a field given by default is located at its nearest written ancestor
    assert cfg.issue("algorithm.params.batch_size", "x").line == 7


def test_models_can_be_built_in_python():
    cfg = RunConfig.model_validate({"data": {"path": "d.jsonl"},
                                    "algorithm": {"kind": "rl", "params": {"group_size": 8}}})
    assert isinstance(cfg.algorithm.params, RLParams) and cfg.algorithm.params.group_size == 8


def test_empty_sections_mean_their_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "model:\nbackend:\ndata: {path: d.jsonl}\nalgorithm:\n"
                                      "  kind: sdft\n  params:\nmetadata:\n  benchmark:\ncallbacks:\n"))
    assert cfg.model.name == "SmolLM2-135M-Instruct" and cfg.algorithm.params.topk == 20
    assert cfg.metadata.benchmark == [] and cfg.local_logger() is not None
    issues = errors_of(write(tmp_path, "data:\nalgorithm: {kind: }\n"))
    assert [(i.field, i.line) for i in issues] == [("data", 1), ("algorithm.kind", 2)]
    assert issues[0].message.startswith("expected a mapping (keys: source_kind, path, transform), "
                                        "got nothing")
