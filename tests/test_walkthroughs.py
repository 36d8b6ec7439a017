"""End to end on the real default model: each walkthrough's config, 1 step, every file checked,
then the history index built from what the real runner wrote."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import evsys_core
from contract import assert_run_dir
from evsys_core.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


SDFT_DEMO = "examples/sdft_walkthrough/data/demo"  # the first rows: one real step stays cheap


def n_tasks(bench_dir: str) -> int:
    return len((REPO / bench_dir / "tasks.jsonl").read_text().splitlines())


@pytest.mark.parametrize("walkthrough,benches,extra", [
    ("sft", {"val": ("val", n_tasks("examples/sft_walkthrough/data/val"), [0, 1])}, set()),
    ("sdft", {"val": ("val", n_tasks(f"{SDFT_DEMO}/val"), [0, 1]),
              "seen": ("val", n_tasks(f"{SDFT_DEMO}/seen"), [0, 1])},
     {"train/kl", "train/completion_len", "train/teacher_top1_agree"}),
    ("rl", {"val": ("val", n_tasks("examples/rl_walkthrough/data/val"), [0, 1])},
     {"train/mean_reward", "train/completion_len"}),
])
def test_walkthrough_runs_one_step_on_the_default_model(tmp_path, examples_ws, default_model, walkthrough,
                                                        benches, extra, capsys):
    config = examples_ws / "examples" / f"{walkthrough}_walkthrough" / "config.yaml"
    assert cli(["validate", str(config), "--deep", "--workspace", str(examples_ws)]) == 0
    out = io.StringIO()
    small = {"sft": [], "sdft": ["algorithm.params.max_tokens=24", f"data.path={SDFT_DEMO}/train.jsonl",
                                 f"metadata.benchmark.0.path={SDFT_DEMO}/val",
                                 f"metadata.benchmark.1.path={SDFT_DEMO}/seen"],
             "rl": ["algorithm.params.max_tokens=24", "algorithm.params.group_size=4"]}[walkthrough]
    result = evsys_core.run(config, ["algorithm.params.max_steps=1", "algorithm.params.batch_size=2",
                                     f"callbacks.0.params.output_dir={tmp_path}", *small],
                            workspace=examples_ws, stream=out)
    assert result.status == "completed", out.getvalue()
    train = assert_run_dir(result.run_dir, 1, benches)
    assert extra <= set(train[0]["metrics"])
    assert (result.run_dir / "learning_curve.png").stat().st_size > 1000
    printed = out.getvalue()
    assert "Status: completed" in printed and f"Logs: " in printed
    if walkthrough == "sdft":  # with the hint the real teacher knows more than the student
        (ceiling,) = [r["metrics"] for r in json.loads("[" + ",".join(
            (result.run_dir / "metrics.jsonl").read_text().splitlines()) + "]") if r["step"] == 0
            and r["split"] == "train"]
        assert ceiling["train/n_tasks"] == 12
        assert ceiling["train/teacher_pass@1"] > ceiling["train/student_pass@1"], ceiling
        assert "WARNING" not in (result.run_dir / "summary.md").read_text()

    # The history index reads what the real runner wrote.
    from evsys_core.history.index import open_index

    index = open_index(tmp_path)
    (row,) = index.runs()
    assert row["run_id"] == result.run_id and row["status"] == "completed" and row["algorithm"] == walkthrough
    q = index.query("select key, value from latest_metrics where run_id = ? and key like 'val/%'", [result.run_id])
    assert dict(q.rows) == {k: v for k, v in result.metrics.items() if k.startswith("val/")}
    capsys.readouterr()
    assert cli(["runs", "--json", "--workspace", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == result.run_dir.name


def test_score_writes_a_stderr_for_every_metric_and_compare_pairs_it(tmp_path, examples_ws, default_model, capsys):
    bench = "examples/sdft_walkthrough/data/val"
    args = ["score", "--benchmark", bench, "--model", "SmolLM2-135M-Instruct", "--max-tokens", "12",
            "--workspace", str(examples_ws)]
    assert cli([*args, "--metrics", "pass@1", "pass@2", "mean_score", "--num-samples", "2",
                "--output", str(tmp_path / "sampled")]) == 0
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "sampled").iterdir()
    (row,) = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    n = n_tasks(bench)
    names = ("val/val/pass@1", "val/val/pass@2", "val/val/mean_score")
    assert set(row["metrics"]) == {*names, *(k + "_stderr" for k in names), "val/val/n_tasks"}
    assert row["metrics"]["val/val/n_tasks"] == n
    assert all(0 <= row["metrics"][k + "_stderr"] <= 0.5 for k in names)
    assert out.count(f"(95% CI, {n} tasks)") == 3

    # two greedy scorings of the same model answer the same: delta 0, inconclusive
    for name in ("a", "b"):
        assert cli([*args, "--output", str(tmp_path / "greedy"), "--name", "val"]) == 0
    capsys.readouterr()
    a, b = sorted(p.name for p in (tmp_path / "greedy").iterdir())
    assert cli(["compare", str(tmp_path / "greedy" / a), str(tmp_path / "greedy" / b), "--json",
                "--workspace", str(tmp_path)]) == 0
    (m,) = json.loads(capsys.readouterr().out)["metrics"]
    assert (m["key"], m["delta"], m["p_value"], m["n_tasks"], m["verdict"]) == \
        ("val/val/pass@1", 0.0, 1.0, n, "inconclusive")
