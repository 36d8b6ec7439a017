"""The index schema: tables people query, bookkeeping tables, and views.

Tables people query (documented in docs/history.md):
  runs            one row per run directory
  params          every config value of a run, flattened to dotted keys
  metrics         long format: one row per (run, line of metrics.jsonl, metric key)
  metric_summary  per (run, key): count, final value, max and min with their steps
  predictions     one row per line of predictions/<benchmark>.jsonl
  conclusions     one row per entry of conclusion.md
Views: latest_metrics (the final value per run and key), best_metrics (max/min per run and key),
groups and group_metrics (replicate groups, mean and 95% interval across runs: groups.py).

Bookkeeping (how refresh knows what changed): `dirs` (every directory walked, its mtime),
`files` (every run file read: size, mtime, inode, bytes consumed so far, and for small files
what was parsed from them), `meta` (schema version, last refresh).
"""

from __future__ import annotations

SCHEMA_VERSION = "3"
# every read of the index (SQL, --where, --sort) is stopped after this; store.run_bounded
QUERY_TIMEOUT_S = 10.0

COLUMNS: dict[str, list[tuple[str, str]]] = {
    "meta": [("key", "VARCHAR"), ("value", "VARCHAR")],
    "runs": [
        ("run_id", "VARCHAR"), ("name", "VARCHAR"), ("path", "VARCHAR"), ("status", "VARCHAR"),
        ("kind", "VARCHAR"), ("algorithm", "VARCHAR"), ("model", "VARCHAR"), ("backend", "VARCHAR"),
        ("created_at", "TIMESTAMP"), ("started_at", "TIMESTAMP"), ("ended_at", "TIMESTAMP"),
        ("duration_s", "DOUBLE"), ("steps", "BIGINT"), ("max_steps", "BIGINT"),
        ("learning_rate", "DOUBLE"), ("batch_size", "BIGINT"), ("lora_rank", "BIGINT"),
        ("epochs", "BIGINT"), ("seed", "BIGINT"), ("data_path", "VARCHAR"),
        ("config", "VARCHAR"), ("config_hash", "VARCHAR"), ("git_commit", "VARCHAR"),
        ("parent_run_id", "VARCHAR"), ("pid", "BIGINT"), ("error", "VARCHAR"),
        ("conclusion", "VARCHAR"), ("n_conclusions", "BIGINT"), ("inferred", "BOOLEAN"),
        ("last_modified", "TIMESTAMP"), ("run_json", "VARCHAR"),
        ("group_id", "VARCHAR"), ("group_name", "VARCHAR"),
    ],
    "params": [("run_id", "VARCHAR"), ("key", "VARCHAR"), ("value", "DOUBLE"),
               ("value_text", "VARCHAR")],
    "metrics": [
        ("run_id", "VARCHAR"), ("step", "BIGINT"), ("split", "VARCHAR"), ("key", "VARCHAR"),
        ("value", "DOUBLE"), ("value_text", "VARCHAR"), ("line", "BIGINT"),
    ],
    "metric_summary": [
        ("run_id", "VARCHAR"), ("key", "VARCHAR"), ("split", "VARCHAR"), ("n", "BIGINT"),
        ("first_step", "BIGINT"), ("final_step", "BIGINT"), ("final_value", "DOUBLE"),
        ("final_text", "VARCHAR"), ("max_value", "DOUBLE"), ("max_step", "BIGINT"),
        ("min_value", "DOUBLE"), ("min_step", "BIGINT"),
    ],
    "predictions": [
        ("run_id", "VARCHAR"), ("benchmark", "VARCHAR"), ("step", "BIGINT"),
        ("task_id", "VARCHAR"), ("instruction", "VARCHAR"), ("sample", "BIGINT"),
        ("answer", "VARCHAR"), ("score", "DOUBLE"), ("passed", "BOOLEAN"),
        ("reason", "VARCHAR"), ("line", "BIGINT"),
    ],
    "conclusions": [("run_id", "VARCHAR"), ("time", "TIMESTAMP"), ("author", "VARCHAR"),
                    ("text", "VARCHAR"), ("ordinal", "BIGINT")],
    "dirs": [("path", "VARCHAR"), ("mtime_ns", "BIGINT"), ("kind", "VARCHAR"),
             ("run_id", "VARCHAR")],
    "files": [
        ("path", "VARCHAR"), ("run_id", "VARCHAR"), ("kind", "VARCHAR"), ("size", "BIGINT"),
        ("mtime_ns", "BIGINT"), ("ino", "BIGINT"), ("offset", "BIGINT"), ("lines", "BIGINT"),
        ("head", "VARCHAR"), ("facts", "VARCHAR"),
    ],
}

VIEWS = """
CREATE VIEW latest_metrics AS
    SELECT run_id, key, split, final_step AS step, final_value AS value,
           final_text AS value_text
    FROM metric_summary;

CREATE VIEW best_metrics AS
    SELECT run_id, key, split, max_value, max_step, min_value, min_step, n
    FROM metric_summary;
"""


def create_sql() -> str:
    from evsys_core.history.groups import views_sql

    parts = []
    for table, cols in COLUMNS.items():
        body = ", ".join(f'"{name}" {typ}' for name, typ in cols)
        parts.append(f"CREATE TABLE {table} ({body});")
    return "\n".join(parts) + VIEWS + views_sql()


# Recomputes metric_summary for the runs whose ids are the parameter (a list of VARCHAR).
# NaN never counts as a best value (DuckDB orders NaN above every number); the final value is
# the one at the highest step, later lines winning ties, NaN or string included.
SUMMARY_FOR_TOUCHED = """
INSERT INTO metric_summary
SELECT run_id, key, arg_max_null(split, ord) AS split, count(*) AS n,
       min(step) AS first_step,
       arg_max_null(step, ord) AS final_step,
       arg_max_null(value, ord) AS final_value,
       arg_max_null(value_text, ord) AS final_text,
       max(value) FILTER (WHERE NOT isnan(value)) AS max_value,
       arg_max(step, value) FILTER (WHERE NOT isnan(value)) AS max_step,
       min(value) FILTER (WHERE NOT isnan(value)) AS min_value,
       arg_min(step, value) FILTER (WHERE NOT isnan(value)) AS min_step
FROM (
    SELECT *, (coalesce(step, -1)::HUGEINT * 4294967296 + line) AS ord  -- HUGEINT: any 64-bit step
    FROM metrics WHERE run_id IN (SELECT unnest(?::VARCHAR[]))
)
GROUP BY run_id, key
"""

# Tables whose rows belong to one run (deleted when a run disappears or is re-read whole).
RUN_TABLES = ("runs", "params", "metrics", "metric_summary", "predictions", "conclusions",
              "files")

# Tables and views a person or agent is meant to query (listed in error messages).
PUBLIC_TABLES = (
    "runs", "params", "metrics", "metric_summary", "predictions", "conclusions",
    "latest_metrics", "best_metrics", "groups", "group_metrics",
)
