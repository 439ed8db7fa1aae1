"""Grid files: resolution into cells, stable ids, and user mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_BASE

from byzbench.config import CellConfig, ConfigError, grid_from_dict, load_grid


def grid(**overrides):
    raw = {"name": "g", "base": dict(TINY_BASE), "grid": {}}
    raw.update(overrides)
    return raw


def error_of(raw, source="configs/x.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        grid_from_dict(raw, source)
    return str(info.value)


def test_cartesian_product_of_axes():
    g = grid_from_dict(grid(grid={"attack": ["none"], "defense": ["fedavg", {
        "name": "fedavg", "weighting": "uniform", "label": "fedavg-u"}],
        "malicious_fraction": [0.0, 0.2], "seed": [0, 1, 2]}))
    assert len(g.cells) == 1 * 2 * 2 * 3
    assert len({c.id for c in g.cells}) == 12
    labels = {c.axes["defense"] for c in g.cells}
    assert labels == {"fedavg", "fedavg-u"}
    uniform = [c for c in g.cells if c.axes["defense"] == "fedavg-u"][0]
    assert uniform.config.defense.params["weighting"] == "uniform"


def test_dotted_axes_set_nested_settings_and_component_params():
    g = grid_from_dict(grid(base={**TINY_BASE, "partition": {"name": "dirichlet"}},
                            grid={"partition.alpha": [0.1, 1.0], "local.lr": [0.05, 0.2]}))
    got = {(c.config.partition.params["alpha"], c.config.local.lr) for c in g.cells}
    assert got == {(0.1, 0.05), (0.1, 0.2), (1.0, 0.05), (1.0, 0.2)}
    assert {c.axes["partition.alpha"] for c in g.cells} == {0.1, 1.0}


def test_parameter_blocks_give_defaults_that_axis_entries_override():
    g = grid_from_dict(grid(defenses={"fedavg": {"weighting": "uniform"}},
                            grid={"defense": ["fedavg", {"name": "fedavg",
                                                         "weighting": "samples"}]}))
    assert [c.config.defense.params["weighting"] for c in g.cells] == ["uniform", "samples"]


def test_cell_id_is_stable_and_ignores_labels_but_not_settings():
    a = grid_from_dict(grid(grid={"defense": ["fedavg"]})).cells[0]
    b = grid_from_dict(grid(grid={"defense": [{"name": "fedavg", "label": "plain"}]})).cells[0]
    c = grid_from_dict(grid(grid={"defense": [{"name": "fedavg",
                                               "weighting": "uniform"}]})).cells[0]
    assert a.id == b.id
    assert a.id != c.id
    # defaults filled: writing a default explicitly gives the same cell
    d = grid_from_dict(grid(grid={"defense": [{"name": "fedavg",
                                               "weighting": "samples"}]})).cells[0]
    assert a.id == d.id
    # adding an axis value re-uses the existing cells' ids
    e = grid_from_dict(grid(grid={"defense": ["fedavg"], "seed": [0, 1]}))
    assert a.id in {cell.id for cell in e.cells}


def test_defaults_fill_every_setting():
    cfg = CellConfig()
    assert cfg.dataset.name == "digits" and cfg.defense.name == "fedavg"
    assert cfg.local.steps == 5 and cfg.local.epochs is None


def test_epochs_replace_default_steps_but_not_both():
    g = grid_from_dict(grid(base={**TINY_BASE, "local": {"epochs": 1}}))
    assert g.cells[0].config.local.steps is None
    assert "either local.steps or local.epochs" in error_of(
        grid(base={**TINY_BASE, "local": {"epochs": 1, "steps": 3}}))


def test_malicious_count_rule_rounds_half_up():
    assert CellConfig(clients=10, malicious_fraction=0.25).num_malicious == 3
    assert CellConfig(clients=10, malicious_fraction=0.24).num_malicious == 2
    assert CellConfig(clients=20, malicious_fraction=0.2).num_malicious == 4


def test_unknown_name_names_file_path_and_suggestion():
    msg = error_of(grid(grid={"defense": ["fedavg", "fedavgg"]}))
    assert "unknown defense 'fedavgg' at grid.defense[1] in configs/x.yaml" in msg
    assert "did you mean 'fedavg'" in msg


def test_unknown_attack_in_block():
    msg = error_of(grid(attacks={"nnone": {}}))
    assert "attacks.nnone" in msg and "did you mean 'none'" in msg


def test_wrong_type():
    msg = error_of(grid(base={**TINY_BASE, "rounds": "many"}))
    assert "configs/x.yaml: base.rounds:" in msg and "'many'" in msg


def test_unknown_key_at_every_level():
    assert "did you mean 'grid'" in error_of({**grid(), "gird": {}})
    msg = error_of(grid(base={**TINY_BASE, "clinets": 3}))
    assert "base.clinets" in msg and "did you mean 'clients'" in msg
    msg = error_of(grid(base={**TINY_BASE, "local": {"lrr": 0.1}}))
    assert "base.local.lrr" in msg and "allowed: steps, epochs" in msg
    msg = error_of(grid(grid={"defense": [{"name": "fedavg", "weigthing": "uniform"}]}))
    assert "grid.defense[0].weigthing" in msg and "did you mean 'weighting'" in msg


def test_empty_axis():
    assert "grid.seed: an axis must be a non-empty list" in error_of(grid(grid={"seed": []}))


def test_bad_fraction():
    msg = error_of(grid(grid={"malicious_fraction": [0.1, 1.5]}))
    assert "grid.malicious_fraction[1]" in msg and "1.5" in msg


def test_fraction_that_leaves_no_honest_client():
    msg = error_of(grid(base={**TINY_BASE, "clients": 4},
                        grid={"malicious_fraction": [0.1, 0.9]}))
    assert "grid.malicious_fraction[1]" in msg and "leaving no honest client" in msg


def test_unknown_axis_path():
    assert "unknown setting 'rouns'" in error_of(grid(grid={"rouns": [1]}))
    assert "has no parameter 'alpha'" in error_of(grid(grid={"partition.alpha": [0.5]}))


def test_bad_component_param_on_dotted_axis():
    msg = error_of(grid(base={**TINY_BASE, "partition": "dirichlet"},
                        grid={"partition.alpha": [0.5, -1]}))
    assert msg.startswith("configs/x.yaml: grid.partition.alpha[1]:")


def test_duplicate_axis_values_need_labels():
    assert "repeated" in error_of(grid(grid={"seed": [0, 0]}))


def test_grid_needs_a_name():
    assert "name" in error_of({"base": {}})


def test_yaml_file_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {seed: [0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_grid(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_grid(tmp_path / "missing.yaml")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_grid(not_mapping)


def test_shipped_configs_are_valid():
    for path in sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")):
        g = load_grid(path)
        assert g.cells, path


def test_load_grid_from_file(tiny_grid: Path):
    g = load_grid(tiny_grid)
    assert g.name == "tiny" and len(g.cells) == 4
    assert g.source == str(tiny_grid)


def test_plugin_path_resolves_a_user_class():
    g = grid_from_dict(grid(grid={"defense": ["byzbench.defenses.fedavg:FedAvg"]}))
    assert g.cells[0].config.defense.params["weighting"] == "samples"
    msg = error_of(grid(grid={"defense": ["no_such_module_xyz:Thing"]}))
    assert "cannot import module 'no_such_module_xyz'" in msg


def test_privacy_block_axes_by_dotted_path_and_ids_of_cells_without_privacy_unchanged():
    plain = grid_from_dict(grid(grid={"seed": [0]})).cells[0]
    # a cell without privacy hashes exactly as before the privacy block existed
    assert "privacy" not in plain.config.identity()
    g = grid_from_dict(grid(grid={"privacy.dp.mode": ["local", "central"],
                                  "privacy.dp.epsilon": [8.0, 1.0],
                                  "privacy.secure_aggregation": ["none", "secagg+"]}))
    assert len(g.cells) == 8 and len({c.id for c in g.cells}) == 8
    # the mode 'none' cells of such a product would all be one configuration: say so
    assert "same configuration" in error_of(grid(grid={"privacy.dp.mode": ["none", "local"],
                                                       "privacy.dp.epsilon": [8.0, 1.0]}))
    # a whole block per axis entry, with a label, lists just the settings wanted
    blocks = grid_from_dict(grid(grid={"privacy": [
        {"label": "none"}, {"label": "secagg+", "secure_aggregation": "secagg+"},
        {"label": "central ε=8", "dp": {"mode": "central", "epsilon": 8}}]}))
    assert [c.axes["privacy"] for c in blocks.cells] == ["none", "secagg+", "central ε=8"]
    assert blocks.cells[2].config.privacy.dp.epsilon == 8
    assert not blocks.cells[0].config.privacy.active
    central = [c for c in g.cells if c.config.privacy.dp.mode == "central"]
    assert {c.config.privacy.dp.epsilon for c in central} == {8.0, 1.0}
    assert all("privacy" in c.config.identity() for c in central)


def test_privacy_mistakes_name_the_key_and_what_is_allowed():
    msg = error_of(grid(grid={"privacy.dp.epsilonn": [1.0]}))
    assert "grid.privacy.dp.epsilonn" in msg and "did you mean 'epsilon'" in msg
    msg = error_of(grid(grid={"privacy.secure_aggregation": ["secagg", "bogus"]}))
    assert "grid.privacy.secure_aggregation[1]" in msg and "'secagg+'" in msg
    msg = error_of(grid(grid={"privacy.dp.mode": ["central"]}))
    assert "privacy.dp" in msg and "sigma" in msg and "epsilon" in msg
    msg = error_of(grid(base={**TINY_BASE, "privacy": {"dp": {"mode": "local", "sigmaa": 1}}}))
    assert "base.privacy.dp.sigmaa" in msg and "allowed: mode, clip, sigma" in msg
