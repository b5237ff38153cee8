"""The recipe registry: every registered recipe runs end to end; every front end lists exactly the registry."""

import dataclasses
import subprocess
import sys

import pytest
import torch

import vitq
from vitq.errors import ConfigError
from vitq.eval.metrics import sqnr_db
from vitq.export import load_quantized, save_quantized
from vitq.recipes import RECIPES, Recipe, SearchSpec, get_recipe, recipe_names, recipes_table, register_recipe


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_end_to_end(name, tiny_vit, calib_images, test_images, tmp_path):
    """quantize -> calibrate -> freeze -> save -> load at W8A8: close to float, reloaded bit-exactly."""
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method=name, num_candidates=6, max_iters=2))
    rep = vitq.calibrate(q, calib_images, progress=False)
    vitq.freeze(q)
    assert len(rep.ops) == sum(vitq.count_quant_ops(q).values())
    assert q.vitq_info.calibration["method"] == name
    with torch.no_grad():
        ref, out = tiny_vit(test_images), q(test_images)
    assert sqnr_db(ref, out) > 15, name  # W8A8 on a random-init tiny ViT
    save_quantized(q, tmp_path / name)
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / name)(test_images), out)


def test_registry_lists_every_method_the_front_ends_accept():
    from vitq.bench.runner import ABLATION_METHODS, PEER_METHODS, TABLE1_METHODS
    from vitq.cli import build_parser

    ap = build_parser()
    quantize = next(a for a in ap._subparsers._group_actions[0].choices["quantize"]._actions if a.dest == "method")
    assert sorted(quantize.choices) == sorted(RECIPES)
    assert set(TABLE1_METHODS) | set(ABLATION_METHODS) | set(PEER_METHODS) <= set(RECIPES)
    for name in RECIPES:
        assert f"`{name}`" in recipes_table()
    out = subprocess.run([sys.executable, "-c", "import vitq.recipes as r; print(sorted(r.RECIPES))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(RECIPES))


def test_unknown_method_lists_the_registry():
    with pytest.raises(ConfigError, match="method='nope' is unknown; choose one of minmax"):
        vitq.QuantConfig(method="nope")


def test_a_new_recipe_is_one_registration(tiny_vit, calib_images):
    """Adding a method: a factory with @register_recipe; config, CLI lists and the engine pick it up."""
    try:
        @register_recipe
        def my_method() -> Recipe:
            return Recipe("test-cosine-wide", "cosine over [0.2, 1.5]", "this test",
                          SearchSpec(objective="cosine", alpha=0.2, beta=1.5))

        assert get_recipe("test-cosine-wide").family == "test_registry"
        assert "test-cosine-wide" in recipe_names()
        q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="test-cosine-wide", num_candidates=4, max_iters=1))
        rep = vitq.calibrate(q, calib_images, progress=False)
        assert all(r.loss_end is not None for r in rep.ops)
        with pytest.raises(ValueError, match="registered twice"):
            register_recipe(my_method)
    finally:
        RECIPES.pop("test-cosine-wide", None)


def test_recipe_validation_names_the_field():
    with pytest.raises(ConfigError, match="objective='l1'"):
        SearchSpec(objective="l1")
    with pytest.raises(ConfigError, match="unknown transforms"):
        Recipe("x", "", "", SearchSpec(), transforms=("rotate",))
    r = get_recipe("liu2021")
    assert dataclasses.replace(r.search, alpha=0.3).alpha == 0.3
    assert vitq.QuantConfig(alpha=0.3).recipe().search.alpha == 0.3  # the config's overrides resolve


def test_every_recipe_says_its_origin():
    from vitq.recipes.base import ORIGINS

    assert {r.origin for r in RECIPES.values()} <= set(ORIGINS)
    assert RECIPES["minmax"].origin == "baseline" and RECIPES["liu2021"].origin == "vitq"
    assert RECIPES["mptq"].origin == "vitq" and RECIPES["ptq4vit"].origin == RECIPES["repq-vit"].origin == "peer"
