"""The shipped ``vitq:detr-synth`` model: loads offline, and reproduces its recorded test mAP through the
package's own data path (``detr-synth:test``) and COCOeval."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from vitq.data.fashion_mnist import find_fashion_mnist_dir  # noqa: E402
from vitq.models.base import get_adapter  # noqa: E402
from vitq.models.detr_synth import ASSET_DIR, load_detr_synth_config  # noqa: E402
from vitq.models.loading import create_model, model_data_config  # noqa: E402

needs_asset = pytest.mark.skipif(not (ASSET_DIR / "model.safetensors").is_file(), reason="detr-synth not trained")
needs_fmnist = pytest.mark.skipif(find_fashion_mnist_dir("test") is None,
                                  reason="full Fashion-MNIST (make bench-setup) needed to draw the test split")


@needs_asset
def test_loads_offline():
    model = create_model("vitq:detr-synth")
    assert get_adapter(model).name == "hf-detr"
    assert model_data_config(model).input_size == (1, 128, 128)
    assert (ASSET_DIR / "model.safetensors").stat().st_size < 6_000_000  # float16, a few MB
    with torch.no_grad():
        out = model(pixel_values=torch.zeros(1, 1, 128, 128))
    assert out.logits.shape == (1, 20, 11) and out.pred_boxes.shape == (1, 20, 4)


@needs_asset
@needs_fmnist
def test_reproduces_recorded_test_map():
    pytest.importorskip("pycocotools")
    from vitq.data.sources import load_images
    from vitq.eval.detection import evaluate_detection

    config = load_detr_synth_config()
    model = create_model("vitq:detr-synth")
    test = load_images("detr-synth:test", model_data_config(model))
    assert len(test.image_ids) == config["test_num"]
    m = evaluate_detection(model, test, forward=get_adapter(model).forward, batch_size=100)
    assert m.map == pytest.approx(config["test_map"], abs=1e-4)
    assert m.map50 == pytest.approx(config["test_map50"], abs=1e-4)
