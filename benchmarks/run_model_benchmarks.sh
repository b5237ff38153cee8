#!/usr/bin/env bash
# The commands that made benchmarks/results/{fmnist-vit,dinov2-s14-fmnist}{.json,.md,-mp.md}, in the
# order they ran (each row also records its own command). Order matters in one place: a mixed-precision
# run writes the uniform row it compares against, so the --peers command runs after it and that row
# in the comparison table is the --peers command's own.
#
#   bash benchmarks/run_model_benchmarks.sh [fmnist|dinov2|all]     (needs `make bench-setup` once)
set -euo pipefail
which="${1:-all}"
T=(--threads 2)

if [[ $which == fmnist || $which == all ]]; then
  # Mixed precision (issue 5) at the sizes of uniform 8, 6 and 4 bits, and at 5 bits fully quantized (issue 7).
  vitq "${T[@]}" bench --mp nuclear nuclear-output hessian greedy --model fmnist-vit --bits 8 6 4 --methods liu2021 --num-calib 32
  vitq "${T[@]}" bench --mp nuclear hessian greedy --model fmnist-vit --bits 5 --methods liu2021 mptq --num-calib 32 --fully-quantized
  # Table 1 + Table 3 + every peer and MPTQ-ViT, one command per calibration size (issues 3 and 8).
  vitq "${T[@]}" bench --model fmnist-vit --bits 8 6 5 4 --num-calib 32 --peers
  vitq "${T[@]}" bench --model fmnist-vit --bits 8 6 4 --num-calib 128
  # MPTQ-ViT's parts and variants (issue 7).
  vitq "${T[@]}" bench --model fmnist-vit --methods mptq-sqb mptq-optm --bits 8 6 5 4 --num-calib 32 --no-ablation
  vitq "${T[@]}" bench --model fmnist-vit --methods liu2021 mptq --bits 5 --num-calib 32 --no-ablation --fully-quantized
  vitq "${T[@]}" bench --model fmnist-vit --methods liu2021 mptq --bits 6 4 --num-calib 32 --no-ablation --optm-softmax
fi

if [[ $which == dinov2 || $which == all ]]; then
  D=(--model dinov2-s14-fmnist --num-calib 32 --num-test 1000)
  vitq "${T[@]}" bench --mp nuclear hessian greedy "${D[@]}" --bits 6 --methods liu2021
  vitq "${T[@]}" bench "${D[@]}" --bits 8 6 4 --methods minmax percentile easyquant liu2021 --no-ablation --peers
  vitq "${T[@]}" bench "${D[@]}" --bits 6 --methods liu2021-sim liu2021-sim+rank liu2021-sim+bc --no-ablation
fi
