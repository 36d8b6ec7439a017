"""A first line of defence for SQL from an agent, in front of the index's read-only connection.

The index itself runs agent SQL on a read-only connection with external access disabled; that
is the real guarantee. This check runs first so that an agent gets a plain explanation
instead of a DuckDB error, and so that nothing which could write, attach, load or read files
ever reaches the database.

It reads the SQL with DuckDB's own parser (not patterns over the text), so it sees exactly
what the database would run: a typo is a syntax error, `count(*) AS load` is an alias, and a
function or table is judged by what the parse tree says it is, never by a word in a string.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Iterator

from evsys_core.errors import EvsysError

MAX_SQL_CHARS = 20_000
TABLES = "runs, params, metrics, metric_summary, predictions, conclusions, latest_metrics, best_metrics"

# functions that read files, the network, the environment or settings, or run SQL given as text
_FORBIDDEN_FUNC = re.compile(
    r"(read_\w+|\w+_scan|\w*scan_\w*|glob|sniff_csv|getenv|current_setting|duckdb_secrets|"
    r"duckdb_extensions|http\w*|query|query_table|load_\w+|install_\w+|system|shell)",
    re.IGNORECASE,
)

_parser: Any = None
_parser_lock = threading.Lock()


class SQLRefused(EvsysError):
    """SQL that is not a single read-only query over the index."""


def _cursor() -> Any:
    """A cursor of a private in-memory DuckDB used only to parse (never to run agent SQL)."""
    global _parser
    with _parser_lock:
        if _parser is None:
            import duckdb

            _parser = duckdb.connect(":memory:", config={"enable_external_access": False})
        return _parser.cursor()


def check_readonly_sql(sql: str, what: str = "sql") -> str:
    """Return the statement (trailing ';' removed) or raise SQLRefused saying why."""
    import duckdb

    if "\x00" in sql:
        raise SQLRefused(f"{what} contains a NUL byte")
    if len(sql) > MAX_SQL_CHARS:
        raise SQLRefused(f"{what} is {len(sql)} characters; the limit is {MAX_SQL_CHARS}")
    cur = _cursor()
    try:
        try:
            statements = cur.extract_statements(sql)
        except duckdb.Error as e:
            raise SQLRefused(f"{what} has a syntax error: {_first_line(e)}. Send one SELECT over "
                             f"the tables {TABLES}") from None
        if not statements:
            raise SQLRefused(f"{what} is empty; send a SELECT over the tables {TABLES}")
        if len(statements) > 1:
            raise SQLRefused(f"{what} holds more than one statement ({len(statements)}); "
                             "send a single SELECT (no ';' in the middle)")
        body = _unexplained(sql, statements[0], what)
        _check_tree(cur, body, what)
    finally:
        cur.close()
    return sql.strip().rstrip(";").strip()


def check_where(where: str) -> str:
    """A WHERE expression for list_runs: one read-only boolean expression, checked wrapped
    as the index wraps it (so a `)` or `--` in it is seen as the database would see it)."""
    check_readonly_sql(f"SELECT 1 WHERE ({where})", what="where")
    return where


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unexplained(sql: str, statement: Any, what: str) -> str:
    """The SELECT to check: the statement itself, or what EXPLAIN [ANALYZE] wraps."""
    import duckdb

    kind = statement.type.name
    if kind == "SELECT":
        return sql
    first = _first_word(sql)
    if kind == "EXPLAIN":
        tokens = [t for t in duckdb.tokenize(sql) if t[1] != duckdb.token_type.comment]
        for i, (offset, _) in enumerate(tokens):
            word = re.match(r"\w*", sql[offset:]).group().lower()
            if word not in ("explain", "analyze"):
                inner = sql[offset:]
                try:
                    inner_kind = duckdb.extract_statements(inner)[0].type.name
                except (duckdb.Error, IndexError):
                    break
                if inner_kind == "SELECT":
                    return inner
                kind, first = inner_kind, _first_word(inner)
                break
    also = f" (it starts with {first})" if first and first != kind else ""
    raise SQLRefused(
        f"{what} is a {kind} statement{also}; only read-only queries (SELECT, WITH, FROM, "
        "DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) are allowed: the index is read-only and cannot "
        "attach, load, copy, set or write anything")


def _first_word(sql: str) -> str:
    import duckdb

    for offset, kind in duckdb.tokenize(sql):
        if kind != duckdb.token_type.comment:
            return re.match(r"\w*", sql[offset:]).group().upper()
    return ""


def _check_tree(cur: Any, sql: str, what: str) -> None:
    """Refuse functions that reach outside the index and tables that name files."""
    tree = json.loads(cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if tree.get("error"):
        raise SQLRefused(f"{what} cannot be checked: {tree.get('error_message', 'unknown error')}; "
                         "send a plain SELECT")
    for node in _nodes(tree):
        fn = node.get("function_name")
        if isinstance(fn, str) and _FORBIDDEN_FUNC.fullmatch(fn):
            raise SQLRefused(
                f"{what} calls {fn}(), which reads outside the index or the environment; "
                f"only the index tables ({TABLES}) can be queried")
        if node.get("type") == "BASE_TABLE":
            name = str(node.get("table_name", ""))
            if any(c in name for c in "./\\:") or node.get("catalog_name") not in ("", None):
                raise SQLRefused(
                    f"{what} reads a file or another database through a quoted table name "
                    f"({name[:60]!r}); only the index tables ({TABLES}) can be queried")


def _nodes(obj: Any) -> Iterator[dict]:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            yield o
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
