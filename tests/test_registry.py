"""registry.split_spec: the one reader of component specs (config, pipeline layers, report)."""

from __future__ import annotations

import pytest

from byzbench.registry import Spec, SpecError, split_spec


def test_a_name_alone():
    assert split_spec("krum") == Spec("krum", {}, None)


def test_inline_params_and_label():
    spec = {"name": "scaling", "factor": 10, "label": "scaling x10"}
    assert split_spec(spec) == Spec("scaling", {"factor": 10}, "scaling x10")
    assert spec == {"name": "scaling", "factor": 10, "label": "scaling x10"}  # not modified


def test_the_resolved_form():
    spec = {"name": "multikrum", "params": {"m": 3}, "label": None}
    name, params, label = split_spec(spec)
    assert (name, params, label) == ("multikrum", {"m": 3}, None)
    params["m"] = 4
    assert spec["params"] == {"m": 3}  # a copy


def test_params_beside_other_keys_stay_inline():
    # only a mapping whose sole other key is a mapping 'params' is the resolved form
    assert split_spec({"name": "x", "params": {"a": 1}, "b": 2}).params == {
        "params": {"a": 1}, "b": 2}
    assert split_spec({"name": "x", "params": 3}).params == {"params": 3}


def test_it_can_stand_in_for_a_two_value_parser():
    name, params, _ = split_spec({"name": "norm_clip", "max_norm": 2.0})
    assert (name, params) == ("norm_clip", {"max_norm": 2.0})
    assert split_spec("median")[:2] == ("median", {})


@pytest.mark.parametrize(("spec", "part", "message"), [
    (3, "", "a defense must be a name or a mapping with 'name' (got 3)"),
    (None, "", "a defense must be a name or a mapping with 'name' (got None)"),
    ({"factor": 2}, "", "a defense mapping needs a 'name' key (got {'factor': 2})"),
    ({"name": 5}, "name", "name: a defense name must be a string (got 5)"),
    ({"name": "krum", "label": 7}, "label", "label: a label must be a string (got 7)"),
])
def test_malformed_specs(spec, part, message):
    with pytest.raises(SpecError) as info:
        split_spec(spec, "defense")
    assert isinstance(info.value, ValueError)
    assert info.value.part == part
    assert str(info.value) == message


def test_kind_defaults_to_component():
    with pytest.raises(ValueError, match="a component must be a name"):
        split_spec(["krum"])
