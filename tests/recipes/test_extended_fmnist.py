"""Real accuracy of the extended recipes on the trained Fashion-MNIST ViT (fmnist-vit, 6 blocks).

Small settings to stay fast: 16 calibration images (train split), C=25, 3 rounds, 1,000 test images.
Measured top-1 (float 0.914 on these 1,000 images): W4A4 liu2021 0.870, mptq 0.876, ptq4vit 0.901,
repq-vit 0.901, liu2021 + fully_quantized 0.892; W8A8 liu2021 + fully_quantized 0.901.
"""

import pytest
import torch

import vitq
from vitq.eval.metrics import predict, top1

SMALL = dict(num_candidates=25, max_iters=3)


@pytest.fixture(scope="module")
def fmnist():
    from vitq.data.sources import load_images
    from vitq.models.loading import create_model, model_data_config

    model = create_model("vitq:fmnist-vit")
    dc = model_data_config(model)
    calib = load_images("fmnist-subset:calib", dc, num=16, seed=0)
    test = load_images("fmnist-subset:test", dc, num=1000, seed=0)
    return model, calib.images, test


def _top1(fmnist, bits, **cfg):
    model, calib, test = fmnist
    q = vitq.quantize(model, vitq.QuantConfig(w_bits=bits, a_bits=bits, **SMALL, **cfg))
    vitq.calibrate(q, calib, progress=False)
    return top1(predict(q, test.images), test.labels)


@pytest.mark.parametrize("cfg,bits,minimum", [
    (dict(method="mptq"), 4, 0.86),
    (dict(method="ptq4vit"), 4, 0.885),
    (dict(method="repq-vit"), 4, 0.885),
    (dict(method="liu2021", fully_quantized=True), 4, 0.875),
    (dict(method="liu2021", fully_quantized=True), 8, 0.89),
], ids=["mptq-W4A4", "ptq4vit-W4A4", "repq-vit-W4A4", "fully-quantized-W4A4", "fully-quantized-W8A8"])
def test_top1_on_fmnist_vit(fmnist, cfg, bits, minimum):
    torch.manual_seed(0)
    assert _top1(fmnist, bits, **cfg) >= minimum
