"""The README's "Errors and exit codes" table matches geosr.errors and what the CLI does."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import geosr.cli.validate as cli_validate
import geosr.errors as errors
from geosr.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
ERROR_CLASSES = {name: cls for name, cls in inspect.getmembers(errors, inspect.isclass)
                 if issubclass(cls, errors.GeosrError)}


def readme_table() -> dict[int, set[str]]:
    """``{exit code: error class names}`` from the README section's table."""
    text = README.read_text()
    section = text.split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if re.match(r"\|\s*\d+\s*\|", ln)]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        table[int(cells[0])] = set(re.findall(r"`(\w+)`", cells[-1])) if len(cells) > 2 else set()
    return table


def test_readme_table_matches_the_error_classes():
    table = readme_table()
    assert set(table) == {0, 1, 2, 130, 143}
    named = {name: code for code, names in table.items() for name in names}
    assert set(named) == set(ERROR_CLASSES), "every error class is in the table, and only they"
    for name, code in named.items():
        assert ERROR_CLASSES[name].exit_code == code, name
    assert {cls.exit_code for cls in ERROR_CLASSES.values()} <= set(table)


def _raising(exc: BaseException):
    def fake(cfg):
        raise exc
    return fake


@pytest.mark.parametrize("name", sorted(ERROR_CLASSES))
def test_the_cli_exits_with_the_code_the_readme_gives(name, monkeypatch):
    code = next(c for c, names in readme_table().items() if name in names)
    monkeypatch.setattr(cli_validate, "validate", _raising(ERROR_CLASSES[name]("x.tif: boom")))
    r = CliRunner().invoke(app, ["validate", "pred.tif", "truth.tif"])
    assert r.exit_code == code
    assert r.stderr.splitlines() == ["geosr validate: error: x.tif: boom"]


def test_interrupt_exits_130_with_one_line(monkeypatch):
    assert 130 in readme_table()
    monkeypatch.setattr(cli_validate, "validate", _raising(KeyboardInterrupt()))
    r = CliRunner().invoke(app, ["validate", "pred.tif", "truth.tif"])
    assert r.exit_code == 130
    assert r.stderr.splitlines() == ["geosr validate: interrupted; no partial output was kept"]


def test_an_unexpected_exception_is_exit_1_and_one_line(monkeypatch):
    monkeypatch.setattr(cli_validate, "validate", _raising(ZeroDivisionError("oops")))
    r = CliRunner().invoke(app, ["validate", "pred.tif", "truth.tif"])
    assert r.exit_code == 1 and 1 in readme_table()
    assert r.stderr.splitlines() == ["geosr validate: error: unexpected failure: "
                                     "ZeroDivisionError: oops (run with --debug for a traceback)"]
