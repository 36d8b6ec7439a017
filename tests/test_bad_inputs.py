"""The bad-input corpus (tests/bad_inputs/): every case through the CLI and the MCP server.

Each case is a small file or folder under tests/bad_inputs/, placed into a fresh copy of the
valid workspace in tests/bad_inputs/_base/ (see the header of cases.yaml for where each kind of
file goes), then sent through every surface its `via` names. Each surface must refuse it with a
non-zero exit code (or a tool error / a report with ok=false), a message holding every
`expect` substring (which name the file and line, or the field, and what is wrong), and must
leave the workspace exactly as it was (.evsys/, the run index, is a rebuildable cache and not
compared) and nothing under /proc or outside the workspace.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

HERE = Path(__file__).parent / "bad_inputs"
SPEC = yaml.safe_load((HERE / "cases.yaml").read_text())
CLI_SURFACES = {"validate", "run", "score", "cli"}
MCP_SURFACES = {"mcp_validate", "mcp_write", "mcp_launch", "mcp_score", "mcp"}
CONFIG = "experiments/config.yaml"


def _params() -> list[Any]:
    out = []
    for case, spec in SPEC["cases"].items():
        for via in spec["via"]:
            out.append(pytest.param(case, via, id=f"{case}-{via}"))
    return out


def test_the_corpus_is_complete():
    """At least 40 cases; every input file is listed and every listed case exists; each case
    names a location (file:line, or a field/argument) in what it expects."""
    cases = SPEC["cases"]
    assert len(cases) >= 40
    on_disk = {str(p.relative_to(HERE)) for folder in ("configs", "data", "tasks", "mcp")
               for p in (HERE / folder).iterdir()}
    on_disk |= {f"dirs/{p.name}" for p in (HERE / "dirs").iterdir()}
    assert on_disk == set(cases)
    kinds = {case.split("/")[0] for case in cases}
    assert kinds == {"configs", "data", "tasks", "dirs", "mcp"}
    for case, spec in cases.items():
        assert spec.get("expect"), case
        assert set(spec["via"]) <= CLI_SURFACES | MCP_SURFACES, case
        assert set(spec["via"]) & CLI_SURFACES and set(spec["via"]) & MCP_SURFACES or case.startswith("mcp/"), \
            f"{case}: run it through the CLI and the MCP server"


# --- the workspace ------------------------------------------------------------------------------

def make_workspace(root: Path, case: str, tiny_model_dir: Path, via: str) -> Path:
    ws = root / "ws"
    shutil.copytree(HERE / "_base", ws)
    shutil.copytree(tiny_model_dir, ws / "model", copy_function=os.link)  # model: {name: model}
    src = HERE / case
    folder = case.split("/")[0]
    if folder == "dirs":
        shutil.copytree(src, ws, dirs_exist_ok=True)
    elif folder == "configs":
        shutil.copyfile(src, ws / CONFIG)
    elif folder == "data":
        shutil.copyfile(src, ws / "data" / "train.jsonl")
    elif folder == "tasks":
        shutil.copyfile(src, ws / "bench" / "val" / "tasks.jsonl")
    if via == "mcp_write":  # write_config gets the text; the file must not be there already
        (ws / CONFIG).unlink()
    return ws


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root (not .evsys/) with a digest of its content."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".evsys")
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = ""
        for name in filenames:
            p = Path(dirpath, name)
            out[os.path.join(rel, name)] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


# --- the surfaces -------------------------------------------------------------------------------

def cli(capsys, argv: list[str]) -> tuple[int, str]:
    from evsys_core.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out + err


def through_cli(capsys, via: str, ws: Path, case: str) -> tuple[bool, str]:
    """(refused, message) from the `evsys` command line, run in-process through its main()."""
    w = ["--workspace", str(ws)]
    if via == "validate":
        code, text = cli(capsys, ["validate", str(ws / CONFIG), "--deep", *w])
    elif via == "run":
        code, text = cli(capsys, ["run", str(ws / CONFIG), *w])
    elif via == "score":
        code, text = cli(capsys, ["score", "--benchmark", "bench/val", "--model", "model", *w])
    else:  # the CLI twin of an MCP-argument case
        argv = json.loads((HERE / case).read_text())["cli"]
        code, text = cli(capsys, [str(ws) if a == "{ws}" else a for a in argv])
    assert code in (1, 2), f"exit code {code}:\n{text}"
    return True, text


def through_mcp(via: str, ws: Path, case: str) -> tuple[bool, str]:
    """(refused, message) from the MCP server, in-process, through the SDK's client."""
    from mcp import Client

    from evsys_mcp.server import build_server

    if via == "mcp":
        spec = json.loads((HERE / case).read_text())
        tool, args = spec["tool"], spec["args"]
    elif via == "mcp_validate":
        tool, args = "validate_config", {"path": "config.yaml", "deep": True}
    elif via == "mcp_write":
        tool, args = "write_config", {"path": "config.yaml",
                                      "yaml_text": (HERE / case).read_text(errors="replace")}
    elif via == "mcp_launch":
        tool, args = "launch_run", {"config_path": "config.yaml"}
    else:
        tool, args = "score_benchmark", {"benchmark": "bench/val", "model": "model"}
    server = build_server(ws, poll_s=0.05)

    async def call():
        async with Client(server) as client:
            return await client.call_tool(tool, args)

    r = anyio.run(call)
    if r.is_error:
        return True, r.content[0].text
    report = r.structured_content or {}
    if tool == "validate_config" and report.get("ok") is False:  # issues as `evsys validate` prints them
        return True, "\n".join(": ".join(x for x in (
            ":".join(str(v) for v in (i.get("file"), i.get("line"), i.get("column")) if v is not None),
            i.get("field"), i.get("message")) if x) for i in report["errors"])
    return False, json.dumps(report)[:2000]


@pytest.mark.parametrize("case,via", _params())
def test_bad_input_is_refused_clearly_and_leaves_nothing_behind(tmp_path, tiny_model_dir, capsys, case, via):
    spec = SPEC["cases"][case]
    ws = make_workspace(tmp_path, case, tiny_model_dir, via)
    before = snapshot(tmp_path)
    if via in CLI_SURFACES:
        refused, text = through_cli(capsys, via, ws, case)
    else:
        refused, text = through_mcp(via, ws, case)
    assert refused, f"{case} was accepted by {via}: {text}"
    text = text.replace(str(ws) + os.sep, "")  # messages may name files absolutely or relatively
    for fragment in [*spec["expect"], *spec.get(f"expect_{via}", [])]:
        assert fragment in text, f"{case} via {via}: {fragment!r} not in:\n{text}"
    assert "Traceback" not in text and "internal error" not in text, text
    assert snapshot(tmp_path) == before, f"{case} via {via} left files behind"
    assert not Path("/proc/evsys-bad-input").exists()
