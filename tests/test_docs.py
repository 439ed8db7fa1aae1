"""The component tables of README.md and docs/*.md are what byzbench/docs.py generates."""

from __future__ import annotations

import pytest

from byzbench import docs
from byzbench.registry import REGISTRIES


@pytest.mark.parametrize("name", docs.DOC_FILES)
def test_generated_tables_are_up_to_date(name):
    path = docs.ROOT / name
    text = path.read_text()
    assert "<!-- BEGIN GENERATED:" in text, f"{name} has no generated block"
    assert docs.render(text) == text, (
        f"{name}: the component tables differ from the registry; run `make docs` "
        "(python -m byzbench.docs) and commit the result")


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_every_builtin_component_is_in_its_table(kind):
    table = docs.component_table(kind)
    registry = REGISTRIES[kind]
    for name, cls in registry.items():
        if cls.__module__.startswith("byzbench."):
            assert f"| `{name}` |" in table


def test_render_replaces_only_the_blocks():
    text = ("intro\n<!-- BEGIN GENERATED: partitions -->\nold table\n"
            "<!-- END GENERATED: partitions -->\noutro\n")
    out = docs.render(text)
    assert out.startswith("intro\n<!-- BEGIN GENERATED: partitions -->\n| name |")
    assert out.endswith("<!-- END GENERATED: partitions -->\noutro\n")
    assert "old table" not in out and "`dirichlet`" in out
    assert docs.render(out) == out


def test_parameters_show_default_choices_and_description():
    table = docs.component_table("defense")
    assert "Every defense also takes `assumed_fraction` (none)" in table
    assert "`weighting` (`samples`; also `uniform`) — " in table  # fedavg
    assert "| `pipeline` |" in table
    assert "| plaintext | server data | state |" in table


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown kind 'widget'"):
        docs.component_table("widget")


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "x.md"
    stale.write_text("<!-- BEGIN GENERATED: models -->\n<!-- END GENERATED: models -->\n")
    assert docs.main(["--check", str(stale)]) == 1
    assert "run `make docs`" in capsys.readouterr().err
    assert docs.main([str(stale)]) == 0
    assert "| `mlp` |" in stale.read_text()
    assert docs.main(["--check", str(stale)]) == 0
