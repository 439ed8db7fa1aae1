"""yamlfile.load_yaml: one-line errors naming the file, shared by grid and reference files."""

from __future__ import annotations

import pytest

from byzbench.yamlfile import load_yaml


class MyError(Exception):
    pass


def test_reads_yaml(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("a: [1, 2]\n")
    assert load_yaml(path) == {"a": [1, 2]}


def test_missing_file_names_it(tmp_path):
    with pytest.raises(MyError, match=r"^reference file .*nope.yaml: no such file$"):
        load_yaml(tmp_path / "nope.yaml", MyError, "reference file")
    with pytest.raises(ValueError, match=r"nope.yaml: no such file$"):
        load_yaml(tmp_path / "nope.yaml")


def test_unreadable_file(tmp_path):
    with pytest.raises(MyError, match="cannot read"):
        load_yaml(tmp_path, MyError)  # a directory


def test_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: [1\n")
    with pytest.raises(MyError, match=r"bad.yaml: invalid YAML at line 3, column 1: "):
        load_yaml(path, MyError)
