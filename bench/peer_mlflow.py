"""MLflow, the B4 peer: the same synthetic history logged into MLflow's SQLite store, then the
same question ("top 5 runs by final val/val/pass@1") through `MlflowClient.search_runs`.

Runs under bench/.venv-peers (MLflow is not an evsys dependency):

    bench/.venv-peers/bin/python bench/peer_mlflow.py build --history DIR --db FILE
    bench/.venv-peers/bin/python bench/peer_mlflow.py serve --db FILE

`build` logs every run of DIR/outputs (run.json name, config params, every metrics.jsonl row
as a metric at its step) through MLflow's own client (`create_run`, `log_batch`,
`set_terminated`) into a fresh database, then renames it into place: logging 10,000 runs takes
a quarter of an hour, so bench/.cache keeps it between bench runs. `serve` answers one line
per query on stdin ("top5") with a JSON line {seconds, top5} measured in-process (the client,
its SQLAlchemy engine and the imports are warm, as in a long-lived tool), so that
bench_history.py can interleave MLflow's queries with its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

METRIC = "val/val/pass_at_1"  # MLflow refuses '@' in a metric name: val/val/pass@1 is logged as this


def mlflow_key(key: str) -> str:
    return key.replace("@", "_at_")
EXPERIMENT = "bench-history"


def client_for(db: Path):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def fast_sqlite() -> None:
    """While building only: no fsync per commit (the data logged are the same; a crash just
    means rebuilding the cache). MLflow commits a few times per run, and on this disk the
    fsyncs, not MLflow, would dominate the build."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cur.close()


def build(history: Path, db: Path) -> None:
    from mlflow.entities import Metric, Param

    fast_sqlite()

    tmp = db.with_name(db.name + ".tmp")
    tmp.unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    client = client_for(tmp)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(db.parent / "mlflow-artifacts"))
    runs = sorted(p for p in (history / "outputs").iterdir() if (p / "run.json").is_file())
    t0 = time.perf_counter()
    for n, d in enumerate(runs, 1):
        info = json.loads((d / "run.json").read_text())
        start_ms = int(info["started_at"] * 1000)
        run = client.create_run(exp, start_time=start_ms, run_name=info["name"],
                                tags={"algorithm": info["algorithm"], "model": info["model"]})
        rid = run.info.run_id
        metrics = []
        for line in (d / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            ts = start_ms + row["step"] * 1000
            metrics += [Metric(mlflow_key(k), float(v), ts, row["step"]) for k, v in row["metrics"].items()]
        params = [Param("algorithm", info["algorithm"]), Param("config_hash", info["config_hash"])]
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            client.log_batch(rid, metrics=metrics[i:i + 1000], params=params if i == 0 else [])
        client.set_terminated(rid, status="FINISHED", end_time=int(info["ended_at"] * 1000))
        if n % 500 == 0:
            el = time.perf_counter() - t0
            print(f"  mlflow: logged {n}/{len(runs)} runs ({el:.0f} s, ~{el / n * (len(runs) - n):.0f} s left)",
                  file=sys.stderr, flush=True)
    del client
    tmp.rename(db)
    (db.with_name(db.name + ".json")).write_text(json.dumps({
        "runs": len(runs), "seconds": time.perf_counter() - t0, "history": str(history)}) + "\n")


def serve(db: Path) -> None:
    import mlflow

    client = client_for(db)
    exp = client.get_experiment_by_name(EXPERIMENT)
    order = [f"metrics.`{METRIC}` DESC"]
    print(json.dumps({"ready": True, "mlflow": mlflow.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip() != "top5":
            break
        t = time.perf_counter()
        runs = client.search_runs([exp.experiment_id], order_by=order, max_results=5)
        top = [round(r.data.metrics[METRIC], 4) for r in runs]
        print(json.dumps({"seconds": time.perf_counter() - t, "top5": top}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["build", "serve"])
    ap.add_argument("--history", type=Path)
    ap.add_argument("--db", type=Path, required=True)
    args = ap.parse_args()
    if args.mode == "build":
        build(args.history, args.db)
    else:
        serve(args.db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
