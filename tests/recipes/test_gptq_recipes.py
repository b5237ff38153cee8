"""The GPTQ recipes and the weight-rounding option: recipe field, config flag, plan key, CLI flag, rows."""

import pytest

from vitq.cli import build_parser
from vitq.cli.common import config_from_args
from vitq.cli.options import extended_overrides
from vitq.config import OpOptions, QuantConfig
from vitq.errors import ConfigError
from vitq.recipes import Recipe, SearchSpec, get_recipe, recipe_names, recipes_table


def test_the_three_recipes():
    g, pc, lg = get_recipe("gptq"), get_recipe("liu2021-pc"), get_recipe("liu2021-gptq")
    assert (g.weight_rounding, g.per_channel_weights, g.search.objective, g.peer) == ("gptq", True, None, True)
    assert "Frantar et al., ICLR 2023 (GPTQ)" in g.reference
    assert (pc.weight_rounding, pc.per_channel_weights) == ("nearest", True)
    assert (lg.weight_rounding, lg.per_channel_weights) == ("gptq", True)
    assert pc.search == lg.search == get_recipe("liu2021").search  # the ablation changes one thing at a time
    assert "gptq" in recipe_names(peer=True)
    assert all(get_recipe(n).weight_rounding == "nearest" for n in recipe_names()
               if n not in ("gptq", "liu2021-gptq", "liu2021-rot-gptq"))
    assert "per-channel weights, weight rounding: gptq" in recipes_table()


def test_weight_rounding_is_validated_everywhere():
    with pytest.raises(ConfigError, match="weight_rounding='adaround'"):
        Recipe("x", "", "", SearchSpec(), weight_rounding="adaround")
    with pytest.raises(ConfigError, match="weight_rounding='obq'"):
        QuantConfig(weight_rounding="obq")
    with pytest.raises(ConfigError, match=r"plan\['fc'\].weight_rounding='up'"):
        OpOptions.from_dict({"weight_rounding": "up"}, "plan['fc']")


def test_config_flag_overrides_the_recipe():
    assert QuantConfig(method="liu2021").recipe().weight_rounding == "nearest"
    assert QuantConfig(method="liu2021", weight_rounding="gptq").recipe().weight_rounding == "gptq"
    assert QuantConfig(method="gptq").recipe().weight_rounding == "gptq"
    assert QuantConfig(method="gptq", weight_rounding="nearest").recipe().weight_rounding == "nearest"
    c = QuantConfig(method="liu2021-gptq", plan={"re:.*fc2": {"weight_rounding": "nearest"}})
    assert c.weight_rounding_for("blocks.1.mlp.fc2") == "nearest" and c.weight_rounding_for("blocks.1.mlp.fc1") == "gptq"


def test_json_round_trip_and_older_configs():
    c = QuantConfig(method="liu2021", weight_rounding="gptq", plan={"head": {"weight_rounding": "nearest"}})
    assert QuantConfig.from_json(c.to_json()) == c
    old = QuantConfig().to_dict()
    old.pop("weight_rounding")
    assert QuantConfig.from_dict(old) == QuantConfig()


def _row_fields(**kw):
    c = QuantConfig(**kw)
    return c.recipe().row_fields(c)


def test_bench_rows_name_an_overridden_rounding():
    assert _row_fields(method="liu2021-gptq") == {}
    assert _row_fields(method="gptq") == {}
    assert _row_fields(method="liu2021", weight_rounding="gptq") == {"weight_rounding": "gptq"}
    assert _row_fields(method="gptq", weight_rounding="nearest") == {"weight_rounding": "nearest"}
    assert _row_fields(method="mptq", weight_rounding="gptq")["weight_rounding"] == "gptq"


def test_cli_flag_reaches_the_config():
    ap = build_parser()
    c = config_from_args(ap.parse_args(["quantize", "--method", "liu2021", "--weight-rounding", "gptq"]))
    assert c.weight_rounding == "gptq" and c.recipe().weight_rounding == "gptq"
    assert config_from_args(ap.parse_args(["quantize", "--method", "gptq"])).weight_rounding is None
    b = ap.parse_args(["bench", "--methods", "liu2021", "--weight-rounding", "gptq"])
    assert extended_overrides(b) == {"weight_rounding": "gptq"}
    with pytest.raises(SystemExit):
        ap.parse_args(["quantize", "--weight-rounding", "stochastic"])
