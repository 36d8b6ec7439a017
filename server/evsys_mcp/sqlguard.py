"""A first line of defence for SQL from an agent, in front of the index's read-only connection.

The index itself runs agent SQL on a read-only connection with external access disabled; that
is the real guarantee. This check runs first so that an agent gets a plain explanation
("only one SELECT statement ...") instead of a DuckDB error, and so that nothing which could
write, attach, load or read files ever reaches the database.
"""

from __future__ import annotations

import re

from evsys_core.errors import EvsysError

MAX_SQL_CHARS = 20_000

_ALLOWED_FIRST = {"select", "with", "from", "values", "describe", "show", "summarize", "table", "explain"}
_FORBIDDEN_WORDS = {
    "attach", "detach", "copy", "install", "load", "pragma", "set", "reset", "export", "import",
    "call", "create", "drop", "alter", "insert", "update", "delete", "truncate", "checkpoint",
    "vacuum", "use", "begin", "commit", "rollback", "transaction", "grant", "merge", "upsert",
    "into",
}
_FORBIDDEN_FUNCS = re.compile(
    r"\b(read_\w+|\w+_scan|\w*scan_\w*|glob|sniff_csv|getenv|current_setting|duckdb_secrets|"
    r"duckdb_extensions|http\w*|query|query_table|load_\w+|install_\w+|system|shell)\s*\(",
    re.IGNORECASE,
)
_TOKEN = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?(\*/|$))
    | (?P<string>'(?:[^']|'')*'?|\$\$.*?(\$\$|$)|[eE]'(?:[^'\\]|\\.|'')*'?)
    | (?P<ident>"(?:[^"]|"")*"?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<semi>;)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class SQLRefused(EvsysError):
    """SQL that is not a single read-only query over the index."""


def check_readonly_sql(sql: str, what: str = "sql") -> str:
    """Return the statement (trailing ';' removed) or raise SQLRefused saying why."""
    if "\x00" in sql:
        raise SQLRefused(f"{what} contains a NUL byte")
    if len(sql) > MAX_SQL_CHARS:
        raise SQLRefused(f"{what} is {len(sql)} characters; the limit is {MAX_SQL_CHARS}")
    words: list[str] = []
    skeleton: list[str] = []  # the query with strings and comments blanked out
    after_semicolon = False
    prev_word = ""
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        text = m.group()
        if kind == "comment":
            skeleton.append(" ")
            continue
        if after_semicolon and not text.isspace():
            raise SQLRefused(
                f"{what} holds more than one statement; send a single SELECT (no ';' in the middle)"
            )
        if kind == "semi":
            after_semicolon = True
            continue
        if kind == "string":
            if prev_word in ("from", "join"):
                raise SQLRefused(
                    f"{what} reads a file through a quoted table name ({text[:60]}); "
                    "only the index tables (runs, metrics, predictions, conclusions) can be queried"
                )
            skeleton.append("''")
            prev_word = ""
            continue
        if kind == "ident":
            if prev_word in ("from", "join") and any(c in text for c in "./\\"):
                raise SQLRefused(
                    f"{what} reads a file through a quoted table name ({text[:60]}); "
                    "only the index tables (runs, metrics, predictions, conclusions) can be queried"
                )
            skeleton.append('""')
            prev_word = ""
            continue
        if kind == "word":
            words.append(text.lower())
            prev_word = text.lower()
        elif not text.isspace():
            prev_word = ""
        skeleton.append(text)
    if not words:
        raise SQLRefused(f"{what} is empty; send a SELECT over the tables runs, metrics, predictions, conclusions")
    if words[0] not in _ALLOWED_FIRST:
        raise SQLRefused(
            f"{what} starts with {words[0].upper()}; only read-only queries (SELECT, WITH, FROM, "
            "DESCRIBE, SHOW) are allowed — the index is read-only"
        )
    bad = sorted(set(words) & _FORBIDDEN_WORDS)
    if bad:
        raise SQLRefused(
            f"{what} uses {', '.join(w.upper() for w in bad)}, which is not allowed: the index is "
            "read-only and cannot attach, load, copy or write anything; send a plain SELECT"
        )
    m = _FORBIDDEN_FUNCS.search("".join(skeleton))
    if m:
        raise SQLRefused(
            f"{what} calls {m.group(1)}(), which reads outside the index or the environment; "
            "only the index tables (runs, metrics, predictions, conclusions) can be queried"
        )
    return sql.strip().rstrip(";").strip()


def check_where(where: str) -> str:
    """A WHERE expression for list_runs: one read-only boolean expression."""
    check_readonly_sql(f"SELECT 1 WHERE {where}", what="where")
    return where
