"""The statement check of /api/sql, table-driven (no ClickHouse)."""

from __future__ import annotations

import pytest

from dashboard.sqlguard import SqlRefused, check_statement, check_tables, describe_target

DB = "meshscope"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select count() from flows;",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "EXPLAIN SELECT * FROM flows",
        "DESCRIBE TABLE flows",
        "desc meshscope.flows",
        "SHOW TABLES",
        "SHOW TABLES FROM meshscope",
        "SHOW CREATE TABLE flows",
        "SHOW COLUMNS FROM flows",
        "SHOW COLUMNS FROM flows FROM meshscope",
        "SHOW TABLES FROM `meshscope`",
        "SHOW CREATE TABLE `meshscope`.`flows`",
        "SELECT 'DROP TABLE flows; INSERT' AS text",  # words inside a string do not count
        "SELECT 1 -- ; DROP TABLE flows",
        "SELECT `settings` FROM flows",  # a quoted identifier is not the keyword
        "SELECT * FROM numbers(10)",
        "SELECT * FROM (SELECT 1)",
    ],
)
def test_read_statements_pass(sql: str) -> None:
    assert check_statement(sql, DB).rstrip().endswith(";") is False


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("", "empty"),
        ("  ;  ", "empty"),
        ("INSERT INTO flows VALUES (1)", "INSERT is refused"),
        ("DROP TABLE flows", "DROP is refused"),
        ("ALTER TABLE flows DELETE WHERE 1", "ALTER is refused"),
        ("SYSTEM RELOAD CONFIG", "SYSTEM is refused"),
        ("SET readonly = 0", "SET is refused"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("SELECT 1; DROP TABLE flows", "one statement"),
        ("SELECT * FROM flows INTO OUTFILE 'x'", "INTO OUTFILE"),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
        ("SELECT 1 FORMAT JSON", "format"),
        ("SHOW GRANTS", "only SHOW"),
        ("SHOW TABLES FROM system", "only the meshscope database"),
        ("SHOW TABLES IN `system`", "only the meshscope database"),
        ("SHOW CREATE TABLE system.users", "only the meshscope database"),
        ("SHOW COLUMNS FROM tables FROM system", "only the meshscope database"),
        ("SHOW CREATE TABLE `system`.`users`", "only the meshscope database"),
        ("SHOW COLUMNS FROM system.users", "only the meshscope database"),
        ("/* hi */ DELETE FROM flows", "DELETE is refused"),
        ("SELECT * FROM file('/etc/passwd')", "file"),
        ("SELECT * FROM flows f JOIN url('http://x', CSV) u ON 1", "url"),
        ("SELECT * FROM s3 ('http://x/b/k.csv')", "s3"),
    ],
)
def test_everything_else_is_refused_with_a_reason(sql: str, says: str) -> None:
    with pytest.raises(SqlRefused, match=says):
        check_statement(sql, DB)


@pytest.mark.parametrize(
    ("tree", "says"),
    [
        (["TABLE id: 3, alias: __table1, table_name: system.tables"], "outside the meshscope database"),
        (["TABLE_FUNCTION id: 3, table_function_name: file"], "file"),
        (["TABLE_FUNCTION id: 3, table_function_name: url"], "url"),
        (["TABLE_FUNCTION id: 3, table_function_name: merge"], "merge"),
    ],
)
def test_parsed_queries_outside_the_database_are_refused(tree: list[str], says: str) -> None:
    with pytest.raises(SqlRefused, match=says):
        check_tables(tree, DB)


def test_parsed_queries_inside_pass() -> None:
    check_tables(
        [
            "TABLE id: 3, alias: __table1, table_name: meshscope.flows",
            "TABLE_FUNCTION id: 5, table_function_name: numbers",
        ],
        DB,
    )


def test_describe_target() -> None:
    assert describe_target("DESCRIBE TABLE system.tables") == "system.tables"
    assert describe_target("desc flows;") == "flows"
    assert describe_target("DESCRIBE (SELECT 1)") is None
