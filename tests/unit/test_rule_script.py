"""The checks the workflow's scripts make of the files their rule declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlscale.rule_script import check_declared_outputs, one_folder


def test_one_folder_is_the_folder_every_file_shares(tmp_path: Path) -> None:
    assert one_folder([tmp_path / "a.csv", str(tmp_path / "b.md")], "outputs") == tmp_path


def test_files_in_two_folders_are_refused_with_both_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the plot outputs must share one folder") as err:
        one_folder([tmp_path / "a" / "x.png", tmp_path / "b" / "y.png"], "plot outputs")
    assert str(tmp_path / "a") in str(err.value) and str(tmp_path / "b") in str(err.value)
    assert "Fix:" in str(err.value)
    with pytest.raises(ValueError, match="share one folder"):
        one_folder([], "outputs")


def test_declared_outputs_must_have_been_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    written = [tmp_path / "t" / "cells.csv", tmp_path / "t" / "speedup.csv"]
    check_declared_outputs(["t/cells.csv"], written, "dlscale.aggregate")  # relative and absolute agree
    with pytest.raises(RuntimeError, match="outputs that dlscale.plots does not write: t/extra.png") as err:
        check_declared_outputs(["t/cells.csv", "t/extra.png"], written, "dlscale.plots")
    assert "cells.csv" not in str(err.value).split("Fix:")[0]
