"""Non-finite logits never become an accuracy: predict and the metrics that take logits raise NonFiniteError."""

import math

import pytest
import torch
import torch.nn as nn

from vitq.errors import NonFiniteError
from vitq.eval.metrics import agreement, predict, sqnr_db, top1


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_predict_names_the_first_bad_image():
    images = torch.randn(10, 3, 2, 2)
    images[7, 0, 0, 0] = math.nan
    with pytest.raises(NonFiniteError, match=r"quantized: the model's logits: 1 of 4 images .*first at image 7"):
        predict(_model(), images, batch_size=4, desc="quantized")
    out = predict(_model(), images[:7], batch_size=4)
    assert out.shape == (7, 3) and torch.isfinite(out).all()


def test_predict_catches_overflow_to_inf():
    model = _model()
    with torch.no_grad():
        model[1].weight.fill_(3e38)
    with pytest.raises(NonFiniteError, match="inf"):
        predict(model, torch.ones(2, 3, 2, 2))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_metrics_refuse_non_finite_logits(bad):
    good = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    broken = good.clone()
    broken[1, 0] = bad
    labels = torch.tensor([0, 1, 0])
    assert top1(good, labels) == 1.0 and agreement(good, good) == 1.0
    with pytest.raises(NonFiniteError, match="top1"):
        top1(broken, labels)
    with pytest.raises(NonFiniteError, match="agreement"):
        agreement(broken, good)
    with pytest.raises(NonFiniteError, match="reference"):
        agreement(good, broken)
    with pytest.raises(NonFiniteError, match="sqnr_db"):
        sqnr_db(good, broken)
    assert sqnr_db(good, good) == math.inf
