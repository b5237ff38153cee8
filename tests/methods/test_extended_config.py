import pytest

from vitq.cli import build_parser
from vitq.cli.common import config_from_args as _config_from_args
from vitq.cli.options import extended_overrides
from vitq.config import QuantConfig
from vitq.errors import ConfigError
from vitq.methods.extended import QuantizerChoices, recipe_flags, resolve_choices


def test_new_fields_round_trip_json(tmp_path):
    c = QuantConfig(method="liu2021", sqb=True, sqb_shift=False, smoothquant_alpha=0.6, sqb_proj=True, optm=True,
                    optm_softmax=True, fully_quantized=True)
    assert QuantConfig.from_json(c.to_json()) == c
    old = QuantConfig().to_dict()
    for k in ("sqb", "sqb_shift", "smoothquant_alpha", "sqb_proj", "optm", "optm_softmax", "fully_quantized"):
        old.pop(k)
    assert QuantConfig.from_dict(old) == QuantConfig()  # configs written before these fields still load


@pytest.mark.parametrize("kwargs,match", [
    ({"smoothquant_alpha": 1.5}, "smoothquant_alpha=1.5"),
    ({"sqb": "yes"}, "sqb='yes' must be true or false"),
    ({"method": "repq-vit", "sqb": True}, "conflicts with method='repq-vit'"),
    ({"sqb_proj": True}, "apply to SQ-b"),
    ({"smoothquant_alpha": 0.5, "method": "mptq-optm"}, "apply to SQ-b"),
])
def test_invalid_combinations_are_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kwargs)


def test_flags_compose_with_any_method():
    assert resolve_choices(QuantConfig(method="liu2021", sqb=True, optm=True)) == resolve_choices(QuantConfig(method="mptq"))
    assert resolve_choices(QuantConfig(method="mptq", sqb_shift=False)).smoothing == "smoothquant"
    assert resolve_choices(QuantConfig(method="easyquant")) == QuantizerChoices()
    fq = resolve_choices(QuantConfig(method="repq-vit", fully_quantized=True))
    assert fq.layernorm_input and fq.post_softmax == "log_sqrt2"  # the recipe's softmax quantizer is kept
    assert resolve_choices(QuantConfig(fully_quantized=True)).post_softmax == "log2"


def test_bench_row_flags():
    assert recipe_flags(QuantConfig(method="liu2021")) == {}
    assert recipe_flags(QuantConfig(method="mptq")) == {"smoothing": "sqb", "post_gelu": "optm", "smoothquant_alpha": "search"}
    assert recipe_flags(QuantConfig(method="liu2021", fully_quantized=True)) == {"post_softmax": "log2", "fully_quantized": True}


def test_cli_flags_reach_the_config(tmp_path):
    ap = build_parser()
    c = _config_from_args(ap.parse_args(["quantize", "--method", "liu2021", "--sqb", "--optm", "--bits", "4"]))
    assert (c.method, c.sqb, c.optm, c.sqb_shift, c.w_bits) == ("liu2021", True, True, True, 4)
    c = _config_from_args(ap.parse_args(["quantize", "--method", "mptq", "--no-sqb-shift", "--smoothquant-alpha", "0.4",
                                         "--sqb-proj", "--fully-quantized"]))
    assert (c.sqb_shift, c.smoothquant_alpha, c.sqb_proj, c.fully_quantized) == (False, 0.4, True, True)
    path = tmp_path / "c.json"
    QuantConfig(method="liu2021", optm=True, sqb=True).to_json(path)
    c = _config_from_args(ap.parse_args(["quantize", "--config", str(path)]))
    assert c.optm and c.sqb  # flags not given leave the file's values
    b = ap.parse_args(["bench", "--methods", "mptq", "--fully-quantized"])
    assert extended_overrides(b) == {"fully_quantized": True}
