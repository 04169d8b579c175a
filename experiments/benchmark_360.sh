#!/usr/bin/env bash
# The 360° targets of issue 13 on the synthetic 360° scene (scene=synthetic_360, the dense-CLIP-like oracle as frozen
# for the forward-facing benchmark), one job at a time:
#   - stage 1 alone: held-out PSNR and seconds (target: >= 28 dB within 10 minutes on this CPU);
#   - plain distillation (+ablation=plain) on that stage 1 (target: >= 85 % of the ideal-3D ceiling's mIoU);
#   - the oracle's ceilings on this scene (experiments/oracle_ceiling.py);
#   - the LERF-OVS protocol on the plain run (python -m laser.lerf_ovs, the scene's lerf_ovs/ labels).
#
#   experiments/benchmark_360.sh [OUT]        # OUT: runs/benchmark_360 by default; PYTHON picks the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/benchmark_360}
py=${PYTHON:-python}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
run() { "$py" train.py logger=none scene=synthetic_360 "stage_store=$out/stages" "hydra.run.dir=$out/$1" "${@:2}"; }

mkdir -p "$out"
run stage1 segmentation=false
run plain +ablation=plain
"$py" experiments/oracle_ceiling.py scene=synthetic_360 | tee "$out/ceiling.md"
"$py" -m laser.lerf_ovs "run=$out/plain" labels=data/synthetic_360/lerf_ovs | tee "$out/lerf_ovs.json"
