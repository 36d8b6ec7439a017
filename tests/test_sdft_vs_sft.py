"""The SDFT-vs-SFT study (examples/sdft_vs_sft): its data is what the generator writes from the
measured base scores, its splits are what the study claims, its configs validate, and (slow)
`run.py --quick` runs end to end and reports a table with intervals and paired verdicts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from evsys_core.cli import main as cli
from evsys_core.data import load_tasks

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "examples/sdft_vs_sft"
ARMS = ("sft_bare", "sft_sentence", "sdft")
BENCHES = ("new_seen", "new_para", "retention", "continent")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"study_{name}", STUDY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_tasks():
    return load("make_tasks")


@pytest.fixture(scope="module")
def measured():
    return json.loads((STUDY / "measured.json").read_text())


def ids(bench: Path) -> list[str]:
    return [t.task_id for t in load_tasks(bench)]


def test_checked_in_data_is_exactly_what_the_generator_writes(make_tasks, measured):
    built = make_tasks.build(measured)
    assert len(built) == 3 + 10 + 7  # the probes, the full files, the quick ones
    for rel, text in built.items():
        assert (REPO / rel).read_text(encoding="utf-8") == text, f"{rel}: rerun {STUDY.name}/make_tasks.py"
    assert make_tasks.build(measured) == built
    assert make_tasks.main(["--check"]) == 0


def test_the_new_skill_is_what_the_teacher_can_teach_and_the_student_cannot(measured):
    for data in (STUDY / "data", STUDY / "data/quick"):
        new = ids(data / "new_seen")
        assert new and all(not measured["plain"][i]["passed"] and measured["hint"][i]["passed"] for i in new)
        assert ids(data / "new_para") == new  # the same facts, other wordings
        assert [t.instruction for t in load_tasks(data / "new_para")] != [t.instruction for t in load_tasks(data / "new_seen")]
        for arm in ARMS:
            assert len((data / f"train.{arm}.jsonl").read_text().splitlines()) == len(new)
    sentence = json.loads((STUDY / "data/train.sft_sentence.jsonl").read_text().splitlines()[0])
    bare = json.loads((STUDY / "data/train.sft_bare.jsonl").read_text().splitlines()[0])
    assert sentence["messages"][1]["content"].startswith("The capital of ")
    assert sentence["messages"][1]["content"].endswith(bare["messages"][1]["content"] + ".")


def test_prior_benchmarks_are_large_untouched_partly_passed_and_apart_from_validation(measured):
    data = STUDY / "data"
    new = set(ids(data / "new_seen"))
    for bench in ("retention", "continent"):
        test, val = ids(data / bench), ids(data / f"val_{bench}")
        assert len(test) >= 100 and len(set(test)) == len(test) and val
        assert not set(test) & set(val) and not set(test) & new
    passed = [measured["plain"][t]["passed"] for t in ids(data / "retention")]
    assert 0 < sum(passed) < len(passed)  # the base model partly passes it (continent: the slow test)
    assert ids(data / "val_new") == ids(data / "new_seen")  # the trained facts in a fourth wording
    val_words = {t.instruction.split(" of ")[0] for t in load_tasks(data / "val_new")}
    test_words = {t.instruction.split(" of ")[0] for t in load_tasks(data / "new_para")}
    assert not val_words & test_words  # the rate is chosen on a wording the report never uses


@pytest.mark.parametrize("config", sorted(p.name for p in STUDY.glob("*.yaml")))
def test_every_arm_config_validates(config, capsys):
    assert cli(["validate", str(STUDY / config), "--deep", "--workspace", str(REPO)]) == 0, capsys.readouterr()
    assert "valid (deep check)" in capsys.readouterr().out  # data, tasks, verifiers and model checked


def test_a_study_never_writes_into_a_folder_that_holds_something(tmp_path):
    (tmp_path / "earlier.txt").write_text("an earlier study's report\n")
    with pytest.raises(SystemExit, match="not empty"):
        load("run").main(["--quick", "--out", str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ["earlier.txt"]  # nothing written, nothing run


def hand_made_study(ws: Path, arms: tuple[str, ...] = ARMS) -> None:
    """Three arms x two seeds of known predictions: every arm starts at the same base answers
    (step 0); at step 12 sdft passes t0..t5 of each new benchmark, sft_* pass t0..t9, and on the
    prior benchmarks sdft keeps all it had (t0..t4) while sft_* keep t0..t1. Seed 1 of sdft also
    passes t6, so the seed-pooled task t6 scores 0.5."""
    from evsys_core import rundir, stats
    from history_fixtures import config_yaml, make_run

    out = ws / "runs"
    n = 20
    for arm in arms:
        for seed in (0, 1):
            preds, rows = {}, []
            for b in BENCHES:
                new = b.startswith("new")
                final = (6 if arm == "sdft" else 10) if new else (5 if arm == "sdft" else 2)
                extra = {"t06"} if (arm == "sdft" and seed == 1 and new) else set()
                steps = {0: 2 if new else 5, **({6: 4} if new else {}), 12: final}
                preds[b] = [{"step": st, "task_id": f"t{i:02d}", "instruction": "q", "sample": 0,
                             "answer": "The answer to this question is X." if arm == "sdft" else "X",
                             "score": float(i < k or (st == 12 and f"t{i:02d}" in extra)),
                             "passed": i < k or (st == 12 and f"t{i:02d}" in extra),
                             "reason": None, "truncated": i == 0 and st == 0}
                            for st, k in steps.items() for i in range(n)]
                for st in steps:
                    vals = [p["score"] for p in preds[b] if p["step"] == st]
                    rows.append({"step": st, "split": "val",
                                 "metrics": stats.with_uncertainty(f"val/{b}/", {"pass@1": vals})})
            if arm == "sdft":
                rows += [{"step": 0, "split": "train", "metrics": {"train/teacher_pass@1": 0.9,
                                                                   "train/student_pass@1": 0.1}},
                         {"step": 12, "split": "train", "metrics": {"train/kl": 0.25}}]
            d = make_run(out, f"{arm}-s{seed}", rows=rows, predictions=preds,
                         config=config_yaml().replace("seed: 0", f"seed: {seed}"))
            info = json.loads((d / rundir.RUN_JSON).read_text())
            info.update(group_id="g" + arm.encode().hex()[:12], group_name=arm)
            rundir.write_json_atomic(d / rundir.RUN_JSON, info)


def test_report_pools_seeds_and_pairs_arms_with_evsys_compare(tmp_path):
    run = load("run")
    ws = tmp_path / "study"
    hand_made_study(ws)
    run.WS = ws
    plan = dict(run.PLANS["quick"], seeds="0,1", steps=12)  # the hand-made runs end at 12
    result = run.report("quick", plan, {a: 5e-4 for a in ARMS}, [], {"total": 1.0}, ws)
    cell = {row["arm"]: row for row in result["table"]}
    assert cell["base"]["new_seen"]["mean"] == pytest.approx(2 / 20)
    assert cell["sft_bare"]["new_seen"]["mean"] == pytest.approx(10 / 20)
    assert cell["sdft"]["new_para"]["mean"] == pytest.approx(6.5 / 20)  # t06: 1 of 2 seeds
    assert cell["sdft"]["new_para"]["n_seeds"] == 2 and cell["sdft"]["new_para"]["n_tasks"] == 20
    assert cell["sdft"]["retention"]["mean"] == pytest.approx(5 / 20)
    assert cell["sft_sentence"]["prior_avg"]["mean"] == pytest.approx(2 / 20)
    assert cell["sft_sentence"]["prior_avg"]["n_tasks"] == 40
    lo, hi = cell["sdft"]["new_para"]["ci95"]
    assert lo < 6.5 / 20 < hi
    verdict = {(v["benchmark"], v["base_arm"], v["cand_arm"]): v for v in result["verdicts"]}
    v = verdict[("retention", "sft_bare", "sdft")]  # sdft keeps 3 more of 20 on every seed
    assert v["by"] == "evsys compare" and v["delta"] == pytest.approx(3 / 20) and v["n_tasks"] == 20
    v = verdict[("new_seen", "sft_bare", "sdft")]
    # 4 tasks differ: the exact sign-flip test's smallest p is 2 / 2**4 = 0.125, not below 0.05
    assert v["delta"] == pytest.approx(-3.5 / 20) and v["verdict"] == "inconclusive"
    assert v["p_value"] == pytest.approx(0.125)
    v = verdict[("prior_avg", "base", "sft_bare")]  # forgot 6 of 40 prior tasks
    assert v["by"] == "stats.paired_compare" and v["delta"] == pytest.approx(-6 / 40)
    assert v["verdict"] == "worse"
    assert verdict[("prior_avg", "base", "sdft")]["delta"] == 0 and \
        verdict[("prior_avg", "base", "sdft")]["verdict"] == "inconclusive"
    assert result["curves"]["sdft"]["new_seen"] == [(0, 0.1), (6, 0.2), (12, pytest.approx(6.5 / 20))]
    assert result["teacher_ceiling"] == {"teacher_pass@1": 0.9, "student_pass@1": 0.1}
    assert result["sdft_final_train"]["kl"] == 0.25
    assert result["teacher_voice_new_para"] == {"sft_bare": 0, "sft_sentence": 0, "sdft": 40}
    assert result["truncation"]["retention"]["base"] == {"truncated": 2, "answers": 40, "mean_chars": 1.0}
    report = (ws / "report.md").read_text()
    assert "| sdft | 0.0005 | 0.325 ± " in report and "| retention | sft_bare | sdft | +0.150 |" in report
    assert (ws / "tradeoff.png").stat().st_size > 1000 and (ws / "curves_new_para.png").stat().st_size > 1000


def test_each_reference_setting_reaches_the_sdft_config_as_given():
    from evsys_core.config import load_config

    run = load("run")
    for name, params in run.ABLATIONS.items():
        sets = [f"algorithm.params.{k}={json.dumps(v)}" for k, v in params.items()]
        got = load_config(STUDY / "sdft.yaml", overrides=sets).algorithm.params
        assert {k: getattr(got, k) for k in params} == params, name
    assert "\n\nThis is an example" in run.ABLATIONS["demo_template"]["demo_template"]


def test_ablation_report_pairs_each_setting_with_the_default_sdft_group(tmp_path):
    run = load("run")
    ws = tmp_path / "study"
    hand_made_study(ws, arms=("sdft", "sdft_skip_first_tokens"))  # the second: the sft pattern
    run.WS = ws
    plan = dict(run.PLANS["quick"], seeds="0,1", steps=12)
    result = run.ablation_report("quick", plan, ["skip_first_tokens"], {"total": 1.0}, ws)
    default, ablated = result["rows"]
    assert default["group"] == "sdft" and "vs_default" not in default
    assert default["ceiling"] == {"teacher_pass@1": 0.9, "student_pass@1": 0.1}
    assert ablated["params"] == {"skip_first_tokens": 3} and ablated["new_seen"]["mean"] == pytest.approx(0.5)
    v = ablated["vs_default"]["new_seen"]  # 10 of 20 against 6 (and t06 on one seed of two)
    assert v["delta"] == pytest.approx(3.5 / 20) and v["p_value"] == pytest.approx(0.125)
    assert v["verdict"] == "inconclusive" and v["n_tasks"] == 20
    assert ablated["vs_default"]["retention"]["delta"] == pytest.approx(-3 / 20)
    md = (ws / "ablations.md").read_text()
    assert "| sdft | 0.900 / 0.100 | 0.325 ± " in md and "| sdft_skip_first_tokens | new_seen | +0.175 |" in md
    assert json.loads((ws / "ablations.json").read_text())["rows"][1]["group"] == "sdft_skip_first_tokens"


@pytest.mark.slow
def test_quick_mode_runs_end_to_end_and_reports_intervals_and_verdicts(tmp_path, default_model, capsys):
    run = load("run")
    out = tmp_path / "study"
    assert run.main(["--quick", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in result["table"]] == ["base", *ARMS]
    n_tasks = {b: len(load_tasks(STUDY / "data/quick" / b)) for b in BENCHES}
    for row in result["table"]:
        for b in BENCHES:
            cell = row[b]
            assert cell["n_tasks"] == n_tasks[b] and cell["n_seeds"] == 1
            assert cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1] and 0 <= cell["mean"] <= 1
        assert row["prior_avg"]["n_tasks"] == n_tasks["retention"] + n_tasks["continent"]
    pairs = {(v["benchmark"], v["base_arm"], v["cand_arm"]) for v in result["verdicts"]}
    for b in (*BENCHES, "prior_avg"):
        assert {(b, "sft_bare", "sdft"), (b, "sft_sentence", "sdft"), (b, "base", "sdft"),
                (b, "base", "sft_bare"), (b, "base", "sft_sentence")} <= pairs
    cell = {row["arm"]: row for row in result["table"]}
    for v in result["verdicts"]:
        if v["base_arm"] != "base" and v["benchmark"] != "prior_avg":  # group vs group: evsys compare
            assert v["by"] == "evsys compare"
            want = cell[v["cand_arm"]][v["benchmark"]]["mean"] - cell[v["base_arm"]][v["benchmark"]]["mean"]
            assert v["delta"] == pytest.approx(want)  # the same seed-pooled tasks as the table
        assert v["verdict"] in ("better", "worse", "inconclusive") and v["ci_low"] <= v["delta"] <= v["ci_high"]
        assert v["n_tasks"] == (n_tasks.get(v["benchmark"]) or result["table"][0]["prior_avg"]["n_tasks"])
    base = result["table"][0]
    assert 0 < base["retention"]["mean"] < 1 and 0 < base["continent"]["mean"] < 1  # room to forget
    c = result["teacher_ceiling"]
    assert 0 <= c["student_pass@1"] < c["teacher_pass@1"] <= 1  # the facts were chosen so
    for arm in ARMS:  # learning curves: the start, the middle and the end
        assert [s for s, _ in result["curves"][arm]["new_seen"]] == [0, 4, 8]
        assert [s for s, _ in result["curves"][arm]["continent"]] == [0, 8]
    for b in BENCHES:
        assert set(result["truncation"][b]) == {"base", *ARMS}
        assert result["truncation"][b]["base"]["answers"] == n_tasks[b]
        assert (out / f"curves_{b}.png").stat().st_size > 1000
    assert (out / "tradeoff.png").stat().st_size > 1000
    assert result["wall_s"]["total"] > 0
    report = (out / "report.md").read_text()
    for arm in ("base", *ARMS):
        assert f"| {arm} |" in report
    assert "±" in report and "| prior_avg | sft_bare | sdft |" in report
    with pytest.raises(SystemExit, match="not empty"):  # a study never writes over another
        run.main(["--quick", "--out", str(out)])
