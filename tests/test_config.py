import pytest

from vitq.config import QuantConfig
from vitq.errors import ConfigError


def test_json_round_trip(tmp_path):
    c = QuantConfig(w_bits=6, a_bits=4, method="easyquant", alpha=0.4, plan={"re:blocks\\.0\\..*": {"w_bits": 8}})
    assert QuantConfig.from_json(c.to_json()) == c
    c.to_json(tmp_path / "c.json")
    assert QuantConfig.from_json(tmp_path / "c.json") == c


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"w_bits": 1}, "w_bits=1.*2..16"),
        ({"a_bits": 17}, "a_bits=17.*2..16"),
        ({"method": "magic"}, "method='magic' is unknown; choose one of minmax"),
        ({"alpha": 1.5, "beta": 1.2}, "alpha=1.5 must not exceed beta"),
        ({"num_candidates": 0}, "num_candidates"),
        ({"percentile": 101}, "percentile"),
        ({"plan": {"blocks.0.attn.qkv": {"w_bits": 20}}}, "plan"),
        ({"plan": {"re:(": {"w_bits": 4}}}, "regular expression"),
    ],
)
def test_invalid_values_are_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kwargs)


def test_unknown_keys_rejected():
    with pytest.raises(ConfigError, match="unknown config keys.*'bitz'"):
        QuantConfig.from_dict({"bitz": 3})


def test_plan_first_match_wins():
    c = QuantConfig(w_bits=6, a_bits=6, plan={"blocks.0.mlp.fc1": {"a_bits": 8}, "re:blocks\\.0\\..*": {"w_bits": 4}})
    assert c.bits_for("blocks.0.mlp.fc1") == (6, 8)
    assert c.bits_for("blocks.0.attn.qkv") == (4, 6)
    assert c.bits_for("blocks.1.attn.qkv") == (6, 6)


def test_plan_entries_set_any_per_op_option():
    c = QuantConfig(plan={"blocks.0.mlp.fc2": {"w_bits": 4, "per_channel_weights": True, "input_quantizer": "optm",
                                               "method": "mse"},
                          "blocks.1.mlp.fc1": {"enabled": False}})
    key, opts = c.plan_entry("blocks.0.mlp.fc2")
    assert key == "blocks.0.mlp.fc2" and (opts.per_channel_weights, opts.input_quantizer, opts.method) == (True, "optm", "mse")
    assert c.per_channel_for("blocks.0.mlp.fc2") and not c.per_channel_for("blocks.0.mlp.fc1")
    assert c.plan_entry("blocks.1.mlp.fc1")[1].enabled is False
    assert QuantConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("entry,match", [
    ({"input_quantizer": "log9"}, "input_quantizer='log9'"),
    ({"method": "magic"}, "method='magic' is unknown"),
    ({"per_channel_weights": "yes"}, "per_channel_weights='yes' must be true or false"),
    ({"bitz": 4}, "keys among"),
    ({}, "non-empty"),
])
def test_bad_plan_entries_are_named(entry, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(plan={"blocks.0.mlp.fc2": entry})


def test_version_1_configs_load_and_upgrade():
    v1 = QuantConfig().to_dict() | {"version": 1, "per_channel_weights": False,
                                    "plan": {"re:blocks\\.0\\..*": {"w_bits": 8, "a_bits": 8}}}
    c = QuantConfig.from_dict(v1)
    assert c.version == 2 and c.bits_for("blocks.0.attn.qkv") == (8, 8) and c.per_channel_weights is False
    with pytest.raises(ConfigError, match="config version 7 is not supported"):
        QuantConfig.from_dict(QuantConfig().to_dict() | {"version": 7})
