"""The README's pictures of `evsys ui` (docs/img/ui-*.png), taken in headless Chromium.

    python docs/ui_screenshots.py          # needs chromium and chromium-driver, as the ui tests

The pictured history is generated, not trained: a plain SFT run, two SDFT replicate groups of
three seeds, and an SDFT run still going, each scored on the first 40 tasks of the SDFT
walkthrough's val benchmark (a task's difficulty is shared by every run, so runs agree on the
easy ones and a paired comparison has something to pair). Pages: the runs table with one group
opened, one run, and a group compared with the SFT run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evsys_core import rundir  # noqa: E402
from evsys_core.ui.server import make_server  # noqa: E402

TASKS = [json.loads(line) for line in
         (ROOT / "examples/sdft_walkthrough/data/val/tasks.jsonl").read_text().splitlines()[:40]]
BENCH = "capitals"
KEY = f"val/{BENCH}/pass@1"
rng = random.Random(3)
DIFFICULTY = [rng.random() for _ in TASKS]


def write_run(out: Path, name: str, algo: str, lr: float, steps: int, skill: float, seed: int,
              status: str = "completed", group: str | None = None,
              conclusion: str | None = None) -> None:
    r = random.Random(f"{name}-{seed}")
    d = out / name
    (d / rundir.PREDICTIONS).mkdir(parents=True)
    start = time.time() - 7200 + len(list(out.iterdir())) * 300
    (d / "config.yaml").write_text(
        "model: {name: SmolLM2-135M-Instruct}\nbackend: {kind: local}\n"
        f"data: {{source_kind: jsonl, path: data/train.jsonl}}\nalgorithm:\n  kind: {algo}\n"
        f"  params: {{learning_rate: {lr}, max_steps: {steps}, batch_size: 8}}\nseed: {seed}\n")
    done = steps if status == "completed" else steps * 9 // 16
    metrics, preds, loss = [], [], 2.2
    for s in range(1, done + 1):
        loss *= 0.985 + 0.01 * r.random()
        metrics.append({"step": s, "split": "train", "metrics": {
            "train/mean_loss": round(loss, 4), "train/grad_norm": round(r.uniform(0.3, 1.2), 3)}})
        if s % 20 == 0 or s == done:
            level = skill * (0.35 + 0.65 * s / steps)
            passed = [d < level + r.gauss(0, 0.08) for d in DIFFICULTY]
            p = sum(passed) / len(passed)
            se = (p * (1 - p) / (len(passed) - 1)) ** 0.5
            metrics.append({"step": s, "split": "val", "metrics": {
                KEY: round(p, 4), f"{KEY}_stderr": round(se, 4), f"val/{BENCH}/n_tasks": 40}})
            for t, ok in zip(TASKS, passed):
                wrong = r.choice(("I am not sure which city that is.",
                                  "Its largest city, I think."))
                preds.append({"step": s, "task_id": t["task_id"], "instruction": t["instruction"],
                              "sample": 0, "score": float(ok), "passed": ok, "reason": None,
                              "answer": f"{t['verifier']['expected']}." if ok else wrong})
    (d / rundir.METRICS).write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (d / rundir.PREDICTIONS / f"{BENCH}.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in preds))
    info = {"id": rundir.new_run_id(), "name": name, "status": status,
            "created_at": start - 2, "started_at": start,
            "ended_at": start + 40 * done if status == "completed" else None,
            "algorithm": algo, "model": "SmolLM2-135M-Instruct", "backend": "local",
            "git_commit": "0" * 40, "step": done, "max_steps": steps, "seed": seed,
            "pid": os.getpid() if status == "running" else None, "config_path": "config.yaml",
            "final_metrics": {}}
    if group:
        info.update(group_id="g" + hashlib.sha1(group.encode()).hexdigest()[:8], group_name=group)
    rundir.write_json_atomic(d / rundir.RUN_JSON, info)
    if conclusion:
        (d / rundir.CONCLUSION).write_text(
            f"## 2026-12-02T09:00:00Z — claude\n\n{conclusion}\n\n")


def history(ws: Path) -> None:
    out = ws / "outputs"
    out.mkdir(parents=True)
    write_run(out, "sft_capitals_lr1e-4", "sft", 1e-4, 120, 0.55, 0,
              conclusion="SFT baseline: pass@1 rises to about 0.5 by step 120.")
    for seed in range(3):
        write_run(out, f"sdft_capitals_lr1e-4-s{seed}", "sdft", 1e-4, 160, 0.72, seed,
                  group="sdft_capitals_lr1e-4",
                  conclusion="SDFT lr 1e-4 beats the SFT baseline: paired verdict better over "
                             "3 seeds and 40 tasks." if seed == 2 else None)
        write_run(out, f"sdft_capitals_lr3e-4-s{seed}", "sdft", 3e-4, 160, 0.62, seed,
                  group="sdft_capitals_lr3e-4")
    write_run(out, "sdft_capitals_topk5", "sdft", 1e-4, 160, 0.7, 0, status="running")


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    img = ROOT / "docs" / "img"
    ws = Path(tempfile.mkdtemp(prefix="evsys-ui-shots-"))
    opts = Options()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1500,900", "--hide-scrollbars"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        history(ws)
        server = make_server(ws, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = server.url.rstrip("/")
        driver.get(url + f"/?sort={KEY}&dir=desc")
        group = driver.find_element(By.CSS_SELECTOR, "tr.group")
        group.find_element(By.CSS_SELECTOR, "button.expand").click()
        driver.save_screenshot(str(img / "ui-runs.png"))
        gid = group.get_attribute("data-group")
        member = driver.find_element(By.CSS_SELECTOR, f"tr.member[data-member-of={gid}] td.name a")
        href = member.get_attribute("href")
        sft = driver.find_element(By.XPATH, "//a[text()='sft_capitals_lr1e-4']")
        sft_id = sft.get_attribute("href").rsplit("=", 1)[-1]
        driver.get(href)
        driver.save_screenshot(str(img / "ui-run.png"))
        driver.get(f"{url}/compare?run={sft_id}&run={gid}")
        driver.save_screenshot(str(img / "ui-compare.png"))
        server.shutdown()
        server.server_close()
    finally:
        driver.quit()
        shutil.rmtree(ws, ignore_errors=True)
    from PIL import Image  # matplotlib's dependency: 64 colours keep the files small

    for p in sorted(img.glob("ui-*.png")):
        Image.open(p).convert("RGB").quantize(64).save(p, optimize=True)
    print(f"wrote {', '.join(p.name for p in sorted(img.glob('ui-*.png')))} in {img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
