import pytest
import torch

from vitq.errors import ConfigError
from vitq.recipes import RECIPES, SearchSpec


def test_every_recipe_has_a_valid_search_spec():
    for name, recipe in RECIPES.items():
        assert isinstance(recipe.search, SearchSpec), name
        assert 0 < recipe.search.alpha <= recipe.search.beta, name


def test_spec_rejects_unknown_choices():
    with pytest.raises(ConfigError, match="init"):
        SearchSpec(init="min")
    with pytest.raises(ConfigError, match="objective"):
        SearchSpec(objective="kl")
    with pytest.raises(ConfigError, match="ranking"):
        SearchSpec(objective="hessian", ranking=True)


def test_factors_are_the_linear_grid():
    spec = SearchSpec(objective="pearson", alpha=0.5, beta=1.2)
    assert spec.factors(8) == torch.linspace(0.5, 1.2, 8).tolist()
    assert spec.factors(1) == [0.5]
