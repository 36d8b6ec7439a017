"""`evsys ui`: the pages over HTTP (escaping, read-only, confinement, parameterised filters)
and driven in a real headless Chromium through Selenium and the system chromedriver (the
runs table sorts and filters, a run shows its curves and predictions, compare shows the
config diff, the verdict column and the per-task diff, live status), on a synthetic history
and on two real runs of the tiny model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from evsys_core import rundir
from evsys_core.ui.server import make_server
from history_fixtures import age, config_yaml, make_run, train_rows

XSS_NAME = "<img src=x onerror=\"document.title='pwned'\">"
XSS_ANSWER = "<script>document.title='pwned'</script>"
CHROMEDRIVER = "/usr/bin/chromedriver"


def preds(step: int, passed: list[int], bad: str = XSS_ANSWER) -> list[dict]:
    return [{"step": step, "task_id": f"t{i}", "instruction": f"What is the capital of c{i}?",
             "sample": 0, "answer": f"city{i}" if p else bad, "score": float(p),
             "passed": bool(p), "reason": None} for i, p in enumerate(passed)]


def with_stderr(rows: list[dict]) -> list[dict]:
    for r in rows:
        if r["split"] == "val":
            r["metrics"]["val/val/pass@1_stderr"] = 0.1
            r["metrics"]["val/val/n_tasks"] = 5
    return rows


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha (sdft, lr 1e-4, two evaluations), beta (sft, lr 3e-4: fixes t1, t3, breaks t0),
    gamma (running: this test's pid, a train.log), and a run whose name is an XSS payload."""
    root = tmp_path_factory.mktemp("ui-ws")
    out = root / "outputs"
    make_run(out, "alpha", rows=with_stderr(train_rows(4, skill=0.5)), config=config_yaml(1e-4),
             summary="# alpha\n\nstatus: completed <b>bold?</b>\n",
             predictions={"val": preds(2, [1, 0, 0, 0, 0]) + preds(4, [1, 0, 1, 0, 0])},
             conclusion=f"## 2026-11-30T10:00:00Z — claude\n\nlr 1e-4 holds up {XSS_ANSWER}\n\n")
    make_run(out, "beta", rows=with_stderr(train_rows(4, skill=0.8)), config=config_yaml(3e-4),
             predictions={"val": preds(4, [0, 1, 1, 1, 0])}, algorithm="sft")
    gamma = make_run(out, "gamma", status="running", rows=train_rows(2), config=config_yaml(1e-3))
    (gamma / rundir.TRAIN_LOG).write_text("step 1 loss 1.0\nstep 2 loss <0.5>\n")
    evil = make_run(out, "evil", rows=train_rows(2, skill=0.1), config=config_yaml(1e-5))
    info = json.loads((evil / rundir.RUN_JSON).read_text())
    rundir.write_json_atomic(evil / rundir.RUN_JSON, {**info, "name": XSS_NAME})
    age(root)
    return root


def serve(workspace: Path):
    server = make_server(workspace, port=0, refresh_s=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def base(ws: Path):
    server = serve(ws)
    yield server.url.rstrip("/")
    server.shutdown()
    server.server_close()


def get(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def run_ids(base: str) -> dict[str, str]:
    _, body, _ = get(base + "/?" + urlencode({"sort": "name", "dir": "asc"}))
    found = re.findall(r"<a href='/run\?id=([0-9a-z]+)'>([^<]*)</a>", body)
    return {"evil" if "img" in name else name: rid for rid, name in found}


def table_names(body: str) -> list[str]:
    return re.findall(r"<td class=name><a href='/run\?id=[0-9a-z]+'>([^<]*)</a>", body)


# --------------------------------------------------------------------------- over HTTP


def test_hostile_values_are_escaped_in_every_page(base: str) -> None:
    ids = run_ids(base)
    pages = [get(base + "/")[1], get(f"{base}/run?id={ids['evil']}")[1],
             get(f"{base}/run?id={ids['alpha']}")[1],
             get(f"{base}/compare?run={ids['alpha']}&run={ids['evil']}")[1]]
    for body in pages:
        assert XSS_NAME not in body and XSS_ANSWER not in body and "<b>bold" not in body
    assert "&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;&quot;&gt;" in pages[0]
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in pages[2]
    assert "status: completed &lt;b&gt;bold?&lt;/b&gt;" in pages[2]  # summary.md, escaped


def test_read_only_own_host_and_no_inline_script(base: str) -> None:
    for method in ("POST", "PUT", "DELETE"):
        code, _, headers = get(base + "/", method=method)
        assert code == 405 and headers["Allow"] == "GET, HEAD"
    code, body, _ = get(base + "/", headers={"Host": "attacker.example:80"})
    assert code == 403 and "<table" not in body
    code, body, headers = get(base + "/")
    assert code == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert "<script>" not in body and "<style" not in body and " style=" not in body
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", body)  # nothing from elsewhere


def test_static_files_are_a_fixed_list(base: str) -> None:
    code, body, headers = get(base + "/static/ui.js")
    assert code == 200 and headers["Content-Type"].startswith("text/javascript")
    assert "textContent" in body
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/pages.py",
                 "/static/", "/static//etc/passwd"):
        code, body, _ = get(base + path)
        assert code == 404 and "import" not in body, path


@pytest.mark.parametrize("filt", [
    "name = x' OR '1'='1",
    "status = completed'; DROP TABLE runs; --",
    "val/val/pass@1 >= 0 OR 1=1",
    "algorithm.params.learning_rate ~ %' OR '' = '",
])
def test_filter_values_are_data_never_sql(base: str, ws: Path, filt: str) -> None:
    code, body, _ = get(base + "/?" + urlencode({"f": filt}))
    assert code == 200
    assert table_names(body) == [] or "problem" in body
    assert "4 runs" in get(base + "/")[1]  # the index is intact


def test_unknown_keys_are_reported_not_queried(base: str) -> None:
    _, body, _ = get(base + "/?" + urlencode({"f": "val/val/pass@2 > 0", "sort": "x\"; --"}))
    assert "no column, metric or param &#x27;val/val/pass@2&#x27;; did you mean val/val/pass@1" in body
    assert "sort: no column, metric or param" in body
    assert len(table_names(body)) == 4  # an unusable filter filters nothing


def test_filter_and_sort_by_param_and_metric(base: str) -> None:
    _, body, _ = get(base + "/?" + urlencode({"f": "algorithm.params.learning_rate >= 1e-4",
                                             "sort": "algorithm.params.learning_rate",
                                             "dir": "asc"}))
    assert table_names(body) == ["alpha", "beta", "gamma"]
    _, body, _ = get(base + "/?" + urlencode({"sort": "val/val/pass@1", "dir": "desc"}))
    assert table_names(body)[:2] == ["beta", "alpha"]
    assert "0.2<small> ± 0.196</small>" in body  # alpha's final 0.2 with stderr 0.1
    _, body, _ = get(base + "/?" + urlencode({"status": "running"}))
    assert table_names(body) == ["gamma"]


def test_status_and_log_endpoints(base: str) -> None:
    ids = run_ids(base)
    code, body, headers = get(f"{base}/api/status?id={ids['gamma']}&id={ids['alpha']}")
    assert code == 200 and headers["Content-Type"] == "application/json"
    got = {r["run_id"]: r["status"] for r in json.loads(body)["runs"]}
    assert got == {ids["gamma"]: "running", ids["alpha"]: "completed"}
    log = json.loads(get(f"{base}/api/log?id={ids['gamma']}")[1])
    assert log["lines"] == ["step 1 loss 1.0", "step 2 loss <0.5>"] and log["status"] == "running"
    assert get(f"{base}/api/log?id=nosuchrun")[0] == 404
    assert get(f"{base}/run?id=nosuchrun")[0] == 404
    code, body, _ = get(f"{base}/compare?run={ids['alpha']}")
    assert code == 400 and "compare takes 2 to 8 different runs" in body


def test_files_are_confined_to_the_workspace(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP-SECRET-CONTENT\n")
    ws = tmp_path / "ws"
    d = make_run(ws / "outputs", "linked", rows=train_rows(2), config=config_yaml())
    os.symlink(outside, d / rundir.SUMMARY)
    os.symlink(outside, d / rundir.TRAIN_LOG)
    age(ws)
    server = serve(ws)
    try:
        url = server.url.rstrip("/")
        rid = run_ids(url)["linked"]
        _, body, _ = get(f"{url}/run?id={rid}")
        assert "TOP-SECRET" not in body and "train/mean_loss" in body
        log = json.loads(get(f"{url}/api/log?id={rid}")[1])
        assert log["lines"] == [] and log["exists"] is False
    finally:
        server.shutdown()
        server.server_close()


def test_cli_serves_on_loopback_and_refuses_a_bad_port(ws: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "evsys_core.cli", "ui", "--workspace", str(ws)]
    bad = subprocess.run(cmd + ["--port", "70000"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--port must be 0 to 65535, got 70000" in bad.stderr
    proc = subprocess.Popen(cmd + ["--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"at (http://127\.0\.0\.1:\d+/) \(read-only", line)
        assert m, line
        code, body, _ = get(m.group(1))
        assert code == 200 and "4 runs" in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    assert shutil.which("chromium") and os.path.exists(CHROMEDRIVER), (
        "the browser tests need Debian's chromium and chromium-driver: `make setup` installs "
        "them (apt-get install chromium chromium-driver)")
    opts = Options()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--disable-extensions", "--window-size=1280,900"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def wait(driver, cond, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(cond)


def names_in_browser(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#runs td.name a")]


def test_browser_runs_table_sorts_and_filters(browser, base: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    browser.get(base + "/")
    assert len(names_in_browser(browser)) == 4
    browser.find_element(By.CSS_SELECTOR, "th[data-key='val/val/pass@1'] a").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "th[aria-sort=descending]"))
    assert names_in_browser(browser)[:2] == ["beta", "alpha"]
    browser.find_element(By.CSS_SELECTOR, "th[data-key='val/val/pass@1'] a").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "th[aria-sort=ascending]"))
    assert names_in_browser(browser)[-2:] == ["alpha", "beta"]

    box = browser.find_element(By.NAME, "f")
    box.send_keys("algorithm.params.learning_rate < 5e-4" + Keys.ENTER)
    wait(browser, lambda d: "learning_rate" in d.current_url)
    assert sorted(names_in_browser(browser)) == sorted([XSS_NAME, "alpha", "beta"])
    Select(browser.find_element(By.NAME, "algorithm")).select_by_visible_text("sft")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait(browser, lambda d: "algorithm=sft" in d.current_url)
    assert names_in_browser(browser) == ["beta"]
    assert browser.title == "runs · evsys"  # no payload ran
    origin = base + "/"
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(origin) for u in loaded), loaded


def test_browser_run_page_shows_curves_and_predictions(browser, base: str) -> None:
    from selenium.webdriver.common.by import By

    ids = run_ids(base)
    browser.get(f"{base}/run?id={ids['alpha']}")
    loss = browser.find_element(By.CSS_SELECTOR, "svg.chart[data-key='train/mean_loss']")
    assert len(loss.find_element(By.CSS_SELECTOR, "polyline").get_attribute("points").split()) == 4
    val = browser.find_element(By.CSS_SELECTOR, "svg.chart[data-key='val/val/pass@1']")
    assert val.find_elements(By.CSS_SELECTOR, "polygon.band")  # the stderr band
    assert not browser.find_elements(By.CSS_SELECTOR, "svg.chart[data-key$='_stderr']")
    rows = browser.find_elements(By.CSS_SELECTOR, "#predictions tbody tr")
    assert [r.get_attribute("class") for r in rows] == ["pass", "fail", "pass", "fail", "fail"]
    assert XSS_ANSWER in rows[1].text  # shown as text, not run
    browser.find_element(By.PARTIAL_LINK_TEXT, "val @ step 2").click()
    wait(browser, lambda d: "eval=0" in d.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#predictions tbody tr")
    assert [r.get_attribute("class") for r in rows] == ["pass", "fail", "fail", "fail", "fail"]
    assert "lr 1e-4 holds up" in browser.find_element(By.CSS_SELECTOR, "article.conclusion").text
    assert browser.title.startswith("alpha")
    browser.get(f"{base}/run?id={ids['evil']}")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(XSS_NAME)
    assert browser.title == XSS_NAME + " · evsys"  # the payload, as text: it did not run


def test_browser_compare_shows_diff_verdict_and_task_diff(browser, base: str) -> None:
    from selenium.webdriver.common.by import By

    ids = run_ids(base)
    browser.get(base + "/?" + urlencode({"sort": "name", "dir": "asc"}))
    for name in ("alpha", "beta"):
        browser.find_element(By.CSS_SELECTOR, f"input[value='{ids[name]}']").click()
    browser.find_element(By.CSS_SELECTOR, "form.compare button").click()
    wait(browser, lambda d: "/compare" in d.current_url)
    diff = browser.find_element(By.CSS_SELECTOR, "table.config-diff").text
    assert "algorithm.params.learning_rate 0.0001 0.0003" in diff
    head = browser.find_element(By.CSS_SELECTOR, "#metrics thead").text
    assert "verdict beta vs alpha" in head
    verdicts = {r.find_element(By.TAG_NAME, "td").text: r.find_element(By.CSS_SELECTOR, ".verdict").text
                for r in browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")}
    # 2 tasks fixed, 1 broken of 5: exact McNemar p = 1; a loss has no per-task predictions
    assert verdicts == {"val/val/pass@1": "inconclusive", "train/mean_loss": "—"}
    section = browser.find_element(By.CSS_SELECTOR, "section.taskdiff[data-benchmark=val]")
    # alpha at step 4: t0, t2 pass; beta: t1, t2, t3 pass
    assert "val: 2 fixed, 1 broken, 2 unchanged" in section.text
    fixed = [r.get_attribute("data-task") for r in section.find_elements(By.CSS_SELECTOR, "tr.fixed")]
    broken = [r.get_attribute("data-task") for r in section.find_elements(By.CSS_SELECTOR, "tr.broken")]
    assert fixed == ["t1", "t3"] and broken == ["t0"]
    row = section.find_element(By.CSS_SELECTOR, "tr.broken").text
    assert "city0" in row and XSS_ANSWER in row  # both answers, side by side
    chart = browser.find_element(By.CSS_SELECTOR, "svg.chart[data-key='val/val/pass@1']")
    assert len(chart.find_elements(By.CSS_SELECTOR, "polyline.series")) == 2


def test_browser_live_status_of_a_running_run(browser, base: str, ws: Path) -> None:
    from selenium.webdriver.common.by import By

    ids = run_ids(base)
    browser.get(f"{base}/run?id={ids['gamma']}")
    badge = browser.find_element(By.CSS_SELECTOR, "h1 .status")
    assert badge.text == "running"
    assert "step 2 loss <0.5>" in browser.find_element(By.ID, "log").text
    run_dir = ws / "outputs" / "gamma"
    with (run_dir / rundir.TRAIN_LOG).open("a") as f:
        f.write("step 3 loss 0.3\n")
    wait(browser, lambda d: "step 3 loss 0.3" in d.find_element(By.ID, "log").text)
    info = json.loads((run_dir / rundir.RUN_JSON).read_text())
    rundir.write_json_atomic(run_dir / rundir.RUN_JSON, {**info, "status": "completed", "step": 3})
    try:
        wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "h1 .status").text == "completed")
    finally:
        rundir.write_json_atomic(run_dir / rundir.RUN_JSON, info)


def test_browser_on_real_runs_of_the_tiny_model(browser, tmp_path: Path, tiny_model_dir) -> None:
    from selenium.webdriver.common.by import By

    from test_runner import make_workspace, run

    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "", bench="run_every: 1, split: val")
    first, _ = run(ws)
    second, _ = run(ws, "algorithm.params.learning_rate=3e-2")
    assert first.status == second.status == "completed"
    server = serve(ws)
    try:
        url = server.url.rstrip("/")
        browser.get(url + "/")
        assert sorted(names_in_browser(browser)) == ["demo", "demo-2"]
        browser.get(f"{url}/run?id={first.run_id}")
        loss = browser.find_element(By.CSS_SELECTOR, "svg.chart[data-key='train/mean_loss']")
        assert len(loss.find_element(By.CSS_SELECTOR, "polyline").get_attribute("points").split()) == 2
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart[data-key='val/val/pass@1']")
        rows = browser.find_elements(By.CSS_SELECTOR, "#predictions tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["t0", "t1", "t2"]
        assert {r.get_attribute("class") for r in rows} <= {"pass", "fail"}
        evals = browser.find_elements(By.CSS_SELECTOR, "nav.evals a")
        assert [a.text.split(" (")[0] for a in evals] == ["val @ step 0", "val @ step 1",
                                                           "val @ step 2"]
        browser.get(f"{url}/compare?run={first.run_id}&run={second.run_id}")
        assert "algorithm.params.learning_rate" in browser.find_element(
            By.CSS_SELECTOR, "table.config-diff").text
        section = browser.find_element(By.CSS_SELECTOR, "section.taskdiff[data-benchmark=val]")
        counts = re.search(r"(\d+) fixed, (\d+) broken, (\d+) unchanged", section.text)
        assert counts and sum(map(int, counts.groups())) == 3, section.text
        assert len(browser.find_elements(By.CSS_SELECTOR, "section.taskdiff tr[data-task]")) == 3
    finally:
        server.shutdown()
        server.server_close()


def test_compare_three_runs_against_the_first(base: str) -> None:
    ids = run_ids(base)
    code, body, _ = get(f"{base}/compare?run={ids['alpha']}&run={ids['beta']}&run={ids['evil']}")
    assert code == 200
    row = re.search(r"<tr><td>algorithm\.params\.learning_rate</td>(.*?)</tr>", body).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row) == ["0.0001", "0.0003", "1e-05"]
    assert body.count("<th>verdict ") == 2 and "Per task: beta against alpha" in body
    assert "<td>train/mean_loss</td><td>train</td><td>0.25</td><td>0.25 <small class=delta>(+0)" in body


def test_browser_compare_shows_the_paired_verdict(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    out = tmp_path / "outputs"
    rows = [{"step": 2, "split": "val", "metrics": {"val/val/pass@1": 0.1}}]
    make_run(out, "weak", rows=rows, config=config_yaml(1e-4),
             predictions={"val": preds(2, [1] * 3 + [0] * 27)})
    rows = [{"step": 2, "split": "val", "metrics": {"val/val/pass@1": 0.9}}]
    make_run(out, "strong", rows=rows, config=config_yaml(3e-4),
             predictions={"val": preds(2, [1] * 27 + [0] * 3)})
    age(tmp_path)
    server = serve(tmp_path)
    try:
        url = server.url.rstrip("/")
        ids = run_ids(url)
        for base_, cand, verdict in (("weak", "strong", "better"), ("strong", "weak", "worse")):
            browser.get(f"{url}/compare?run={ids[base_]}&run={ids[cand]}")
            cell = browser.find_element(By.CSS_SELECTOR, "#metrics .verdict")
            assert cell.text == verdict and f"v-{verdict}" in cell.get_attribute("class")
            assert "30 paired tasks" in cell.get_attribute("title")
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------- replicate groups

WEAK = [[1, 1, 1] + [0] * 27, [1, 1, 1, 1] + [0] * 26, [1, 1] + [0] * 28]
STRONG = [[0] + [1] * (25 + k) + [0] * (4 - k) for k in range(3)]


def make_group(out: Path, name: str, group_id: str, lr: float, passed: list[list[int]]) -> None:
    """One replicate group as `evsys run --seeds` leaves it: a run per seed sharing a
    group id, each with val predictions on 30 tasks and its val/val/pass@1."""
    for seed, p in enumerate(passed):
        config = config_yaml(lr).replace("seed: 0", f"seed: {seed}")
        rows = [{"step": 2, "split": "val", "metrics": {"val/val/pass@1": sum(p) / len(p)}}]
        d = make_run(out, f"{name}-s{seed}", config=config, rows=rows,
                     predictions={"val": preds(2, p, bad="no idea")})
        info = json.loads((d / rundir.RUN_JSON).read_text())
        rundir.write_json_atomic(d / rundir.RUN_JSON, {**info, "group_id": group_id,
                                                       "group_name": name, "seed": seed})


@pytest.fixture(scope="module")
def gws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two groups of three seeds (weak: lr 1e-4, about 0.1; strong: lr 3e-4, about 0.87)
    and one run outside any group (solo: lr 1e-3, 0.5)."""
    root = tmp_path_factory.mktemp("ui-groups")
    out = root / "outputs"
    make_group(out, "weak", "g0000aaaa", 1e-4, WEAK)
    make_group(out, "strong", "g0000bbbb", 3e-4, STRONG)
    make_run(out, "solo", config=config_yaml(1e-3), rows=[
        {"step": 2, "split": "val", "metrics": {"val/val/pass@1": 0.5}}],
        predictions={"val": preds(2, [1, 0] * 15, bad="no idea")})
    age(root)
    return root


@pytest.fixture(scope="module")
def gbase(gws: Path):
    server = serve(gws)
    yield server.url.rstrip("/")
    server.shutdown()
    server.server_close()


def row_names(driver) -> list[str]:
    """The runs table's rows as shown: a group's name, or a run's."""
    from selenium.webdriver.common.by import By

    return [tr.find_element(By.CSS_SELECTOR, ".group-name, td.name a").text
            for tr in driver.find_elements(By.CSS_SELECTOR, "#runs tbody tr") if tr.is_displayed()]


def test_group_rows_filter_and_sort_by_what_they_show(gbase: str) -> None:
    def shown(**q) -> list[str]:
        body = get(gbase + "/?" + urlencode(q))[1]
        return [g or r for g, r in re.findall(
            r"<tr class=group data-group='\w+'>.*?<span class=group-name>(\w+)</span>|"
            r"<tr data-run='\w+'>.*?<td class=name><a [^>]*>(\w+)</a>", body)]

    assert shown(sort="val/val/pass@1", dir="desc") == ["strong", "solo", "weak"]
    assert shown(sort="val/val/pass@1", dir="asc") == ["weak", "solo", "strong"]
    # a metric condition is on the group's mean (weak's runs are all under 0.2)
    assert sorted(shown(f="val/val/pass@1 > 0.3")) == ["solo", "strong"]
    assert shown(f="val/val/pass@1 < 0.3") == ["weak"]
    # conditions on params and runs columns pick runs; a group is in when one of its runs is
    assert shown(f="algorithm.params.learning_rate < 2e-4") == ["weak"]
    assert sorted(shown(f="seed = 1")) == ["strong", "weak"]
    assert shown(q="stro") == ["strong"]
    assert shown(sort="name", dir="asc") == ["solo", "strong", "weak"]
    assert "<span class=count>7 runs in 3 rows</span>" in get(gbase + "/")[1]


def test_browser_groups_on_the_runs_page_expand_to_their_runs(browser, gbase: str,
                                                               gws: Path) -> None:
    from selenium.webdriver.common.by import By

    from evsys_core.history.index import open_index

    view = {g["group_id"]: g["metrics"]["val/val/pass@1"] for g in open_index(gws).groups()}
    weak = [sum(p) / len(p) for p in WEAK]
    assert view["g0000aaaa"]["mean"] == pytest.approx(sum(weak) / 3)  # the view, by hand
    browser.get(gbase + "/?" + urlencode({"sort": "val/val/pass@1", "dir": "desc"}))
    assert row_names(browser) == ["strong", "solo", "weak"]
    row = browser.find_element(By.CSS_SELECTOR, "#runs tr.group[data-group=g0000aaaa]")
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    m = view["g0000aaaa"]
    half = (m["ci95_high"] - m["ci95_low"]) / 2
    assert f"{m['mean']:.4g} ± {half:.4g}" in cells
    assert "weak" in cells[1] and "3 seeds" in cells[1]
    assert "0, 1, 2" in cells  # the seed param, which the replicates do not share
    tip = row.find_element(By.CSS_SELECTOR, "td.num .ci").get_attribute("title")
    assert tip == f"95% CI [{m['ci95_low']:.4g}, {m['ci95_high']:.4g}], 3 runs"
    members = "#runs tr.member[data-member-of=g0000aaaa]"
    assert not any(tr.is_displayed() for tr in browser.find_elements(By.CSS_SELECTOR, members))
    row.find_element(By.CSS_SELECTOR, "button.expand").click()
    wait(browser, lambda d: all(tr.is_displayed()
                                for tr in d.find_elements(By.CSS_SELECTOR, members)))
    assert row_names(browser) == ["strong", "solo", "weak", "weak-s0", "weak-s1", "weak-s2"]
    shown = [tr.find_element(By.CSS_SELECTOR, "td.num").text
             for tr in browser.find_elements(By.CSS_SELECTOR, members)]
    assert shown == [f"{v:.4g}" for v in weak]
    row.find_element(By.CSS_SELECTOR, "button.expand").click()
    wait(browser, lambda d: not any(tr.is_displayed()
                                    for tr in d.find_elements(By.CSS_SELECTOR, members)))
    box = browser.find_element(By.NAME, "f")
    box.send_keys("val/val/pass@1 < 0.3\n")
    wait(browser, lambda d: "0.3" in d.current_url)
    assert row_names(browser) == ["weak"]


def test_browser_group_compare_shows_the_pooled_verdict_and_task_diff(browser, gbase: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(gbase + "/?" + urlencode({"sort": "name", "dir": "desc"}))  # weak, strong, solo
    for gid in ("g0000aaaa", "g0000bbbb"):
        browser.find_element(By.CSS_SELECTOR, f"tr.group input[value={gid}]").click()
    browser.find_element(By.CSS_SELECTOR, "form.compare button").click()
    wait(browser, lambda d: "/compare" in d.current_url)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Compare 2 replicate groups"
    legend = browser.find_element(By.CSS_SELECTOR, "ol.legend li[data-side=g0000aaaa]").text
    assert "weak" in legend and "3/3 completed" in legend and "weak-s2" in legend
    cell = browser.find_element(By.CSS_SELECTOR, "#metrics .verdict")
    assert cell.text == "better" and "v-better" in cell.get_attribute("class")
    tip = cell.get_attribute("title")
    assert "30 paired tasks" in tip and "3 and 3 replicates pooled" in tip
    section = browser.find_element(By.CSS_SELECTOR, "section.taskdiff[data-benchmark=val]")
    # pass rates over the seeds: weak t0 1, t1 1, t2 2/3, t3 1/3; strong t0 0, t1-t25 1,
    # t26 2/3, t27 1/3: t0 broken; t1, t28, t29 unchanged; the other 26 fixed
    assert "val: 26 fixed, 1 broken, 3 unchanged" in section.text
    broken = section.find_element(By.CSS_SELECTOR, "tr.broken")
    assert broken.get_attribute("data-task") == "t0"
    assert [td.text for td in broken.find_elements(By.TAG_NAME, "td")][2:] == [
        "city0", "pass", "no idea", "fail"]
    fixed = section.find_element(By.CSS_SELECTOR, "tr.fixed[data-task=t3]")
    assert [td.text for td in fixed.find_elements(By.TAG_NAME, "td")][2:] == [
        "no idea · city3", "0.33", "city3", "pass"]
    chart = browser.find_element(By.CSS_SELECTOR, "svg.chart[data-key='val/val/pass@1']")
    assert len(chart.find_elements(By.CSS_SELECTOR, "circle.series")) == 2  # a mean per group


def test_group_against_a_run(gbase: str) -> None:
    ids = run_ids(gbase)
    code, body, _ = get(f"{gbase}/compare?run={ids['solo']}&run=g0000bbbb")
    assert code == 200 and "<h1>Compare 2 runs and groups</h1>" in body
    assert re.search(r"class='verdict v-better' title='Δ [^']*30 paired tasks, 1 and 3 "
                     r"replicates pooled'>better<", body)
    assert "Per task: strong against solo" in body
    code, body, _ = get(f"{gbase}/compare?run=g0000bbbb&run=gnosuchgroup")
    assert code == 400 and "no run or replicate group with id &#x27;gnosuchgroup&#x27;" in body


def test_a_group_with_unfinished_runs(tmp_path: Path) -> None:
    """A group's mean and interval are over its completed runs only; its row says how many of
    each status; a group with no completed run cannot be compared yet (400 naming it)."""
    out = tmp_path / "outputs"
    make_group(out, "mixed", "g0000cccc", 1e-4, WEAK)
    make_group(out, "fresh", "g0000dddd", 3e-4, STRONG[:1])
    for name, status in (("mixed-s2", "interrupted"), ("fresh-s0", "failed")):
        info = json.loads((out / name / rundir.RUN_JSON).read_text())
        rundir.write_json_atomic(out / name / rundir.RUN_JSON, {**info, "status": status})
    age(tmp_path)
    server = serve(tmp_path)
    try:
        url = server.url.rstrip("/")
        body = get(url + "/")[1]
        row = re.search(r"<tr class=group data-group='g0000cccc'>(.*?)</tr>", body).group(1)
        assert ">2 completed, 1 interrupted</span>" in row
        mean = (sum(WEAK[0]) + sum(WEAK[1])) / 60  # seeds 0 and 1 only
        assert f">{mean:.4g}<small> ± " in row and ", 2 runs'" in row
        code, body, _ = get(f"{url}/compare?run=g0000dddd&run=g0000cccc")
        assert code == 400 and "group fresh (g0000dddd) has no completed run yet" in body
    finally:
        server.shutdown()
        server.server_close()
