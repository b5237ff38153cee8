import pytest

from vitq.config import QuantConfig
from vitq.errors import ConfigError
from vitq.recipes import Quantizers


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
    composed, mptq = QuantConfig(method="liu2021", sqb=True, optm=True).recipe(), QuantConfig(method="mptq").recipe()
    assert (composed.quantizers, composed.transforms, composed.search) == (mptq.quantizers, mptq.transforms, mptq.search)
    assert QuantConfig(method="mptq", sqb_shift=False).recipe().smoothing == "smoothquant"
    assert QuantConfig(method="easyquant").recipe().quantizers == Quantizers()
    fq = QuantConfig(method="repq-vit", fully_quantized=True).recipe().quantizers
    assert fq.layernorm_input and fq.post_softmax == "log_sqrt2"  # the recipe's softmax quantizer is kept
    assert QuantConfig(fully_quantized=True).recipe().quantizers.post_softmax == "log2"


def _row_fields(**kw):
    c = QuantConfig(**kw)
    return c.recipe().row_fields(c)


def test_bench_row_flags():
    assert _row_fields(method="liu2021") == {}
    assert _row_fields(method="mptq") == {"smoothing": "sqb", "post_gelu": "optm", "smoothquant_alpha": "search"}
    assert _row_fields(method="liu2021", fully_quantized=True) == {"post_softmax": "log2", "fully_quantized": True}
    # (the authors' settings: a post_gelu field sets the faithful rows apart from the old repq-vit rows)
    assert _row_fields(method="repq-vit") == {"smoothing": "repq", "post_gelu": "affine", "post_softmax": "log_sqrt2"}


def test_sqb_shift_false_needs_sqb():
    """``sqb_shift=False`` alone would be ignored (no SQ-b to take the shift out of): an error naming it."""
    with pytest.raises(ConfigError, match="sqb_shift=False applies to SQ-b, which method='liu2021' does not use"):
        QuantConfig(method="liu2021", sqb_shift=False)
    with pytest.raises(ConfigError, match="method='mptq-optm'"):
        QuantConfig(method="mptq-optm", sqb_shift=False)
    assert QuantConfig(method="liu2021", sqb=True, sqb_shift=False).recipe().smoothing == "smoothquant"
    assert QuantConfig(method="mptq-sqb", sqb_shift=False).recipe().smoothing == "smoothquant"
