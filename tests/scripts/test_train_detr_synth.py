"""The detr-synth training script's pieces: dense pretraining targets, and the frozen-backbone feature path
giving the same detections as the model with its own backbone."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import train_detr_synth as T  # noqa: E402

from vitq.data.synth_detection import SynthSpec  # noqa: E402

TINY = dict(in_chans=1, image_size=64, widths=[8, 16, 16], depth=1, d_model=32, encoder_layers=1, decoder_layers=1,
            heads=4, ffn_dim=64, num_queries=5, num_labels=10)


def test_dense_targets_mark_cells_inside_each_box_smallest_on_top():
    # a 64 px canvas, 4x4 grid (stride 16, centres 8, 24, 40, 56): a big box and a small one inside it
    big, small = ([0.0, 0.0, 50.0, 50.0], 3), ([20.0, 20.0, 10.0, 10.0], 7)
    cls, ltrb = T.dense_targets([[small, big]], canvas=64, grid=4)
    expect = torch.full((4, 4), -1)
    expect[:3, :3] = 3
    expect[1, 1] = 7  # centre (24, 24) lies in both: the smaller box wins
    assert torch.equal(cls[0], expect)
    assert torch.allclose(ltrb[0, :, 1, 1], torch.tensor([4.0, 4.0, 6.0, 6.0]) / 64)
    assert torch.allclose(ltrb[0, :, 0, 2], torch.tensor([40.0, 8.0, 10.0, 42.0]) / 64)
    # a box between cell centres still owns the cell holding its centre
    cls, _ = T.dense_targets([[([50.0, 2.0, 4.0, 4.0], 1)]], canvas=64, grid=4)
    assert cls[0, 0, 3] == 1 and (cls >= 0).sum() == 1


def _pool():
    rng = np.random.default_rng(0)
    imgs = np.zeros((20, 28, 28), np.uint8)
    imgs[:, 6:22, 6:22] = rng.integers(100, 255, size=(20, 1, 1))
    return imgs, np.arange(20) % 10


def test_cached_features_reproduce_the_model_with_its_backbone():
    torch.manual_seed(0)
    model = T.build_detr_synth(TINY).eval()
    spec = SynthSpec(canvas=64, min_size=12, max_size=28, max_objects=2)
    backbone = model.model.backbone.model
    cache = T.FeatureCache(backbone, np.random.default_rng(0), _pool(), spec, size=6, batch=4)
    assert cache.features.shape == (6, 16, 4, 4) and all(t is not None for t in cache.targets)
    old = cache.features.clone()
    cache.refresh(4)
    assert not torch.equal(cache.features[:4], old[:4]) and torch.equal(cache.features[4:], old[4:])
    assert cache.next == 4
    cache.refresh(4)  # wraps: redraws the last 2, then starts again at 0
    assert cache.next == 0

    x, _ = T.train_batch(np.random.default_rng(1), _pool(), spec, 3)
    with torch.no_grad():
        ref = model(pixel_values=x)
        feeder = T.FeatureFeeder(backbone.channels)
        feeder.features = backbone(x)[0]
        model.model.backbone.model = feeder
        out = model(pixel_values=torch.zeros(3, 1, 4, 4))
    assert torch.allclose(out.logits, ref.logits, atol=1e-5) and torch.allclose(out.pred_boxes, ref.pred_boxes, atol=1e-5)


def test_init_from_is_checked_before_any_training(tmp_path, monkeypatch, capsys):
    """``--init-from`` continues a saved model: a folder without one, a second backbone pretraining, or the
    same folder as ``--out`` (it would overwrite what it starts from) are refused up front."""
    import safetensors.torch

    model = T.build_detr_synth(TINY)
    saved = tmp_path / "run1"
    saved.mkdir()
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in model.state_dict().items()},
                                str(saved / "model.safetensors"))
    loaded = T.load_weights(saved / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in loaded.values() if v.is_floating_point())
    assert torch.allclose(loaded["class_labels_classifier.weight"], model.class_labels_classifier.weight, atol=1e-3)
    for argv, msg in ((["--init-from", str(tmp_path / "none"), "--pretrain-min", "0"], "no model.safetensors"),
                      (["--init-from", str(saved)], "--pretrain-min 0"),
                      (["--init-from", str(saved), "--pretrain-min", "0", "--out", str(saved)], "same folder")):
        monkeypatch.setattr(sys, "argv", ["train_detr_synth.py", *argv])
        with pytest.raises(SystemExit) as e:
            T.main()
        assert e.value.code == 2 and msg in capsys.readouterr().err
