"""User plugins: classes by import path and by entry point, and bad plugins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_BASE, write_grid
from typer.testing import CliRunner

import byzbench.api as bb
from byzbench.cli import app
from byzbench.config import ConfigError, grid_from_dict
from byzbench.defenses.base import RoundContext
from byzbench.registry import ATTACKS, DEFENSES

EXAMPLE = Path(__file__).parents[1] / "examples" / "plugin"
runner = CliRunner()


@pytest.fixture
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    for name in [m for m in sys.modules if m.startswith("byzbench_example")]:
        del sys.modules[name]


def test_example_plugin_runs_a_tiny_grid_by_import_path(example_on_path, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", {
        "name": "plug", "base": {**TINY_BASE, "malicious_fraction": 0.2},
        "grid": {"attack": ["none", "byzbench_example.drift:Drift"],
                 "defense": [{"name": "byzbench_example.median_of_means:MedianOfMeans",
                              "groups": 3, "label": "mom"}]}})
    summary = bb.run(grid, tmp_path / "res", workers=2)
    assert summary.ok and summary.done == 2
    cells = bb.load_results(tmp_path / "res").cells
    assert set(cells["defense"]) == {"mom"}
    assert cells["accuracy"].notna().all()


def test_median_of_means_by_hand(example_on_path):
    from byzbench_example.median_of_means import MedianOfMeans

    defense = MedianOfMeans(MedianOfMeans.Params(groups=3))
    updates = torch.tensor([[0.0], [2.0], [4.0], [6.0], [1e9], [float("nan")]])
    ctx = RoundContext(round=0, client_ids=torch.arange(6), num_samples=torch.ones(6), f=1,
                       generator=torch.Generator().manual_seed(0),
                       global_params=torch.zeros(1))
    verdict = defense(updates, ctx)
    # 3 groups of 2: the NaN group is dropped; the median of the other two means is their
    # average, or, if 1e9 and NaN share a group, the median of two honest pair means
    assert torch.isfinite(verdict.aggregate).all()
    assert 0.0 <= float(verdict.aggregate) <= 5e8


def test_entry_point_plugins_register_and_are_listed(example_on_path, tmp_path, monkeypatch):
    dist = tmp_path / "byzbench_example-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: byzbench-example\n"
                                   "Version: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[byzbench.defenses]\nmedian_of_means = byzbench_example.median_of_means:MedianOfMeans\n"
        "[byzbench.attacks]\ndrift = byzbench_example.drift:Drift\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for registry in (DEFENSES, ATTACKS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "plugins", {})
        registry.refresh()
    assert "median_of_means" in DEFENSES.names() and "drift" in ATTACKS.names()
    grid = grid_from_dict({"name": "ep", "base": TINY_BASE,
                           "grid": {"defense": ["median_of_means"], "attack": ["drift"]}})
    assert grid.cells[0].config.defense.params["groups"] == 5
    listing = runner.invoke(app, ["list", "defense"], terminal_width=200)
    assert "median_of_means" in listing.output and "plugin" in listing.output


BROKEN = '''
from byzbench.defenses.base import Defense


class NotADefense:
    """Has no aggregate method."""


class Lazy(Defense):
    """Subclasses Defense but implements nothing."""
'''


def test_a_plugin_without_the_interface_gets_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, missing in (("NotADefense", "aggregate"), ("Lazy", "aggregate"),
                          ("Nope", "has no attribute 'Nope'")):
        with pytest.raises(ConfigError) as info:
            grid_from_dict({"name": "b", "grid": {"defense": [f"broken_plugin:{name}"]}},
                           "x.yaml")
        assert missing in str(info.value) and "grid.defense[0]" in str(info.value)


def test_example_plugin_passes_the_conformance_checks(example_on_path):
    from byzbench_example.drift import Drift
    from byzbench_example.median_of_means import MedianOfMeans

    from byzbench.testing import check_attack, check_defense

    # its random grouping depends on the order of the rows by design
    check_defense(MedianOfMeans, {"groups": 3}, permutation=False)
    check_attack(Drift)
