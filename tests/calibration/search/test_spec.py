import pytest
import torch

from vitq.calibration.search import SearchSpec
from vitq.methods.recipes import METHODS


def test_every_recipe_has_a_valid_search_spec():
    for name, recipe in METHODS.items():
        spec = SearchSpec.of(recipe)
        assert (spec.objective, spec.alpha, spec.beta) == (recipe.objective, recipe.alpha, recipe.beta), name
        assert SearchSpec.of(spec) is spec


def test_spec_rejects_unknown_choices():
    with pytest.raises(ValueError, match="init"):
        SearchSpec(init="min")
    with pytest.raises(ValueError, match="objective"):
        SearchSpec(objective="kl")
    with pytest.raises(ValueError, match="ranking"):
        SearchSpec(objective="hessian", ranking=True)


def test_factors_are_the_linear_grid():
    spec = SearchSpec(objective="pearson", alpha=0.5, beta=1.2)
    assert spec.factors(8) == torch.linspace(0.5, 1.2, 8).tolist()
    assert spec.factors(1) == [0.5]
