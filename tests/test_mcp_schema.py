"""The MCP surface as an agent reads it: titles, descriptions, enums, exclusivity, honest
annotations and capabilities, errors in the tools' own words, the SQL the server and the docs
hand out, and the tools added for agents (best_runs, plot_metrics, list_configs,
list_benchmarks). Through the SDK's real client, in-process."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evsys_core import rundir
from evsys_mcp.server import AUTORESEARCH, INSTRUCTIONS, TOOLS, build_server
from test_mcp_server import CONFIG, err, make_run, ok, runs, session, srv, ws  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent


def test_every_tool_and_parameter_is_described_for_an_agent(srv):
    tools = {t.name: t for t in session(srv, lambda c: c.list_tools()).tools}
    assert set(tools) == {name for name, *_ in TOOLS}
    for name, tool in tools.items():
        assert tool.title and tool.description, name
        schema = tool.input_schema
        assert schema.get("additionalProperties") is False, name  # unknown arguments are refused
        for arg, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{arg} has no description"
    props = tools["list_runs"].input_schema["properties"]
    assert set(props["status"]["anyOf"][0]["enum"]) == {"running", "completed", "failed", "interrupted"}
    assert set(props["kind"]["enum"]) == {"train", "score", "all"}
    assert set(tools["best_runs"].input_schema["properties"]["by"]["enum"]) == {"final", "best"}
    assert tools["score_benchmark"].input_schema["oneOf"] == [{"required": ["model"]}, {"required": ["run"]}]
    assert tools["write_config"].annotations.idempotent_hint is False  # a second call is refused
    assert tools["cancel_run"].annotations.destructive_hint is True
    assert tools["run_status"].annotations.idempotent_hint is False  # its answer changes as a run goes on
    for name in tools:
        assert re.search(r"\d[\d,]*\s+characters", tools[name].description), f"{name} does not say what it costs"


def test_capabilities_do_not_advertise_what_is_not_implemented(srv):
    async def init(c):
        return c.initialize_result if hasattr(c, "initialize_result") else c.server_capabilities

    result = session(srv, init)
    caps = getattr(result, "capabilities", result)
    assert caps.resources is not None and not caps.resources.subscribe


def test_unknown_arguments_and_bad_splits_get_a_hint(srv, runs):
    text = err(srv, "list_runs", limt=5)
    assert "limt" in text and "Extra inputs are not permitted" in text
    hint = err(srv, "get_metrics", run="sdft_lr_small", split="validation")
    assert "validation" in hint and "train, val" in hint


def test_errors_name_the_tools_own_arguments(srv, ws, runs):
    text = err(srv, "score_benchmark", benchmark="data", model="SmolLM2-135M-Instruct")
    assert "benchmark data" in text and "--benchmark" not in text and str(ws) not in text
    text = err(srv, "list_runs", sort_by="nonexistent_column")
    assert "sort_by" in text and "--sort" not in text and "evsys query" not in text
    text = err(srv, "best_runs", metric="val/val/pass@1", where="nonexistent > 1")
    assert "where" in text and "--where" not in text


def sql_handed_out() -> list[tuple[str, str]]:
    """Every SQL statement the server's prompt and instructions and the docs give out."""
    found = [("autoresearch prompt", m.group(1)) for m in re.finditer(r"(SELECT\b.*?)\n\s*—", AUTORESEARCH, re.S)]
    found += [("instructions", m.group(0)) for m in re.finditer(r"SELECT\b[^\n]*", INSTRUCTIONS)]
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]
    for doc in docs:
        text = doc.read_text()
        for block in re.findall(r"```sql\n(.*?)```", text, re.S):
            for stmt in block.split(";"):
                stmt = "\n".join(line for line in stmt.splitlines() if not line.strip().startswith("--")).strip()
                if stmt:
                    found.append((doc.name, stmt))
        found += [(doc.name, m.group(1)) for m in re.finditer(r'evsys query "(.*?)"', text, re.S)
                  if re.match(r"\s*(select|with)\b", m.group(1), re.I)]
    return found


def test_every_sql_statement_handed_out_runs(srv, runs):
    statements = sql_handed_out()
    assert any(where == "autoresearch prompt" for where, _ in statements)
    assert len(statements) >= 9
    ok(srv, "record_conclusion", run="sdft_lr_small", text="a conclusion for the JOIN to find")
    for where, sql in statements:
        r = session(srv, lambda c: c.call_tool("query_runs", {"sql": sql}))
        assert not r.is_error, f"the SQL from {where} fails: {sql}\n{r.content[0].text}"
    prompt_sql = next(sql for where, sql in statements if where == "autoresearch prompt")
    rows = ok(srv, "query_runs", sql=prompt_sql)["rows"]
    assert ["sdft_lr_small", "completed", "a conclusion for the JOIN to find"] in rows


def test_best_runs_ranks_training_runs_and_pages(srv, ws, runs):
    out = ok(srv, "best_runs", metric="val/val/pass@1", limit=1)
    assert out["runs"][0]["rank"] == 1 and out["next_offset"] == 1
    rest = ok(srv, "best_runs", metric="val/val/pass@1", offset=1, limit=10)
    values = [out["runs"][0]["value"], *(r["value"] for r in rest["runs"])]
    assert values == sorted(values, reverse=True) and rest["next_offset"] is None
    low = ok(srv, "best_runs", metric="train/mean_loss", maximize=False)
    assert [r["value"] for r in low["runs"]] == sorted(r["value"] for r in low["runs"])
    assert "did you mean" in err(srv, "best_runs", metric="val/val/pass@2")


def test_score_runs_are_their_own_kind(srv, ws, runs):
    d = make_run(ws, "toy-scored", lr=1e-4)["dir"]
    info = json.loads((d / rundir.RUN_JSON).read_text())
    info.update(kind="score", algorithm="score", final_metrics={"val/val/pass@1": 9.0})
    rundir.write_json_atomic(d / rundir.RUN_JSON, info)
    trained = {r["name"] for r in ok(srv, "list_runs")["runs"]}
    assert "toy-scored" not in trained and "sdft_lr_small" in trained
    assert [r["name"] for r in ok(srv, "list_runs", kind="score")["runs"]] == ["toy-scored"]
    assert "toy-scored" in {r["name"] for r in ok(srv, "list_runs", kind="all")["runs"]}
    assert "toy-scored" not in {r["name"] for r in ok(srv, "best_runs", metric="val/val/pass@1")["runs"]}
    assert ok(srv, "best_runs", metric="val/val/pass@1", kind="score")["runs"][0]["name"] == "toy-scored"
    cli = subprocess.run([sys.executable, "-m", "evsys_core.cli", "runs", "--json", "--workspace", str(ws)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "toy-scored" not in cli.stdout and "sdft_lr_small" in cli.stdout
    cli = subprocess.run([sys.executable, "-m", "evsys_core.cli", "runs", "--json", "--kind", "score",
                          "--workspace", str(ws)], capture_output=True, text=True, timeout=120)
    assert [r["name"] for r in json.loads(cli.stdout)] == ["toy-scored"]


def test_plot_metrics_is_an_image(srv, runs):
    r = session(srv, lambda c: c.call_tool("plot_metrics", {"run": "sdft_lr_large"}))
    assert not r.is_error, r.content[0].text
    image = r.content[0]
    assert image.type == "image" and image.mime_type == "image/png"
    png = base64.b64decode(image.data)
    assert png.startswith(b"\x89PNG") and len(image.data) < 50_000
    assert "no metric" in err(srv, "plot_metrics", run="sdft_lr_large", keys=["nope"])


def test_list_configs_and_benchmarks(srv, ws, runs):
    (ws / "experiments" / "a.yaml").write_text(CONFIG.format(lr=1e-4, name="a"))
    (ws / "experiments" / "sub").mkdir()
    (ws / "experiments" / "sub" / "b.yml").write_text(CONFIG.format(lr=1e-4, name="b"))
    configs = ok(srv, "list_configs")
    paths = [i["path"] for i in configs["items"]]
    assert paths == ["experiments/a.yaml", "experiments/sub/b.yml"] and configs["total"] == 2
    assert not any(p.startswith("outputs/") for p in paths)  # a run's own config.yaml is not a config to edit
    one = ok(srv, "list_configs", limit=1)
    assert len(one["items"]) == 1 and one["next_offset"] == 1
    assert ok(srv, "list_configs", under="experiments/sub")["total"] == 1
    assert "'..'" in err(srv, "list_configs", under="../")
    benches = ok(srv, "list_benchmarks")
    assert benches["items"] == [{"path": "bench/val", "tasks": 1}]


def test_write_config_never_touches_a_run_directory(srv, ws, runs):
    target = runs["lr_small"]["dir"] / "config.yaml"
    before = target.read_text()
    text = err(srv, "write_config", path="outputs/sdft_lr_small/config.yaml",
               yaml_text=CONFIG.format(lr=9e-1, name="x"), overwrite=True)
    assert "inside the run directory outputs/sdft_lr_small" in text
    assert target.read_text() == before
    nested = err(srv, "write_config", path="outputs/sdft_lr_small/checkpoints/new.yaml",
                 yaml_text=CONFIG.format(lr=9e-1, name="x"))
    assert "run directory" in nested and not (runs["lr_small"]["dir"] / "checkpoints").exists()
    (ws / "experiments" / "link.yaml").symlink_to(target)  # nor through a symlink to one
    assert "run directory" in err(srv, "write_config", path="link.yaml", yaml_text=CONFIG.format(lr=9e-1, name="x"),
                                  overwrite=True)
    assert target.read_text() == before


def test_resources_show_workspace_relative_paths(srv, ws, runs):
    cfg = runs["lr_small"]["dir"] / "config.yaml"
    cfg.write_text(cfg.read_text().replace("data/train.jsonl", str(ws / "data" / "train.jsonl")))
    rid = runs["lr_small"]["id"]

    async def read(c):
        return (await c.read_resource(f"evsys://runs/{rid}/config")).contents[0].text

    text = session(srv, read)
    assert str(ws) not in text and "path: data/train.jsonl" in text


def test_the_prompt_names_every_step_tool(srv):
    async def get(c):
        return (await c.get_prompt("autoresearch", {})).messages[0].content.text

    text = session(srv, get)
    for tool in ("best_runs", "list_configs", "plot_metrics", "score_benchmark", "wait_for_run"):
        assert tool in text
