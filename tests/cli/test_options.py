"""The MPTQ-ViT flags reach the config, over a --config file, on quantize and bench."""

import pytest

from vitq.cli import build_parser
from vitq.cli.common import config_from_args
from vitq.cli.options import extended_overrides
from vitq.config import QuantConfig


def test_cli_flags_reach_the_config(tmp_path):
    ap = build_parser()
    c = config_from_args(ap.parse_args(["quantize", "--method", "liu2021", "--sqb", "--optm", "--bits", "4"]))
    assert (c.method, c.sqb, c.optm, c.sqb_shift, c.w_bits) == ("liu2021", True, True, True, 4)
    c = config_from_args(ap.parse_args(["quantize", "--method", "mptq", "--no-sqb-shift", "--smoothquant-alpha", "0.4",
                                         "--sqb-proj", "--fully-quantized"]))
    assert (c.sqb_shift, c.smoothquant_alpha, c.sqb_proj, c.fully_quantized) == (False, 0.4, True, True)
    path = tmp_path / "c.json"
    QuantConfig(method="liu2021", optm=True, sqb=True).to_json(path)
    c = config_from_args(ap.parse_args(["quantize", "--config", str(path)]))
    assert c.optm and c.sqb  # flags not given leave the file's values
    b = ap.parse_args(["bench", "--methods", "mptq", "--fully-quantized"])
    assert extended_overrides(b) == {"fully_quantized": True}


def test_reconstruction_flags_reach_the_config():
    ap = build_parser()
    c = config_from_args(ap.parse_args(["quantize", "--method", "liu2021-rot", "--recon-iters", "50",
                                         "--search-images", "16"]))
    assert (c.recon_iters, c.search_images) == (50, 16)
    assert c.recipe().reconstruction.iters == 50
    c = config_from_args(ap.parse_args(["quantize", "--method", "liu2021-rot-recon", "--recon-iters", "0"]))
    assert c.recipe().reconstruction is None
    assert extended_overrides(ap.parse_args(["bench", "--methods", "liu2021", "--recon-iters", "9"])) == {"recon_iters": 9}
    c = config_from_args(ap.parse_args(["quantize", "--method", "liu2021-pc-asym", "--recon-iters", "40",
                                         "--recon-lr-weight-scale", "1e-3", "--recon-drop-prob", "0",
                                         "--recon-lr-scale", "0.01"]))
    r = c.recipe().reconstruction
    assert (r.iters, r.lr_weight_scale, r.drop_prob, r.lr_scale) == (40, 1e-3, 0.0, 0.01)
    assert extended_overrides(ap.parse_args(["bench", "--methods", "liu2021-pc-recon", "--recon-drop-prob", "0.25"])) \
        == {"recon_drop_prob": 0.25}
    for bad in (["--recon-drop-prob", "1.5"], ["--recon-lr-weight-scale", "-1"], ["--recon-lr-scale", "nan"]):
        with pytest.raises(SystemExit):
            ap.parse_args(["quantize", "--method", "liu2021-pc-recon", *bad])
