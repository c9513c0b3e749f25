#!/usr/bin/env bash
# The paper's classification runs (Appendix D): CUB-200, FGVC-Aircraft and Stanford Cars, each in Train
# and in Tune mode with 3 seeds: ResNet-50 from torchvision's ImageNet weights, 448 px crops, batch 48,
# TLlib's recipe otherwise (20 epochs x 500 steps, lr 0.01, backbone 0.1x, decay x0.1 at epoch 12).
# The settings are the config files configs/paper/<dataset>_<mode>.yaml; this script adds the seed, the
# data root and the run directory. Then prints the Table 3 summary (scripts/summarize_runs.py).
#
#   bash scripts/finetune_paper.sh [RUNS_DIR] [extra examples/finetune.py flags, e.g. --amp bf16]
#
# Environment: DATA (default data): data sets under $DATA/<dataset>; PYTHON (default python);
# SEEDS (default "0 1 2"); DATASETS (default "cub200 aircraft stanford_cars"); MODES (default "train tune").
# Re-running the script skips finished runs and resumes interrupted ones from their latest.pt.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-runs/paper}"
shift || true
python="${PYTHON:-python}"
data="${DATA:-data}"

for dataset in ${DATASETS:-cub200 aircraft stanford_cars}; do
  for mode in ${MODES:-train tune}; do
    for seed in ${SEEDS:-0 1 2}; do
      log="$runs/${dataset}_resnet50_${mode}_seed${seed}"
      if [ -f "$log/summary.json" ] && grep -q '"status": "completed"' "$log/summary.json"; then
        echo "== $log: done, skipped"
        continue
      fi
      resume=()
      if [ -f "$log/checkpoints/latest.pt" ]; then
        resume=(--resume "$log/checkpoints/latest.pt")
      fi
      settings=(-c "configs/paper/${dataset}_${mode}.yaml")
      if [ ! -f "configs/paper/${dataset}_${mode}.yaml" ]; then  # eval, deploy ...: the paper's recipe in that mode
        settings=(-c "configs/paper/${dataset}_tune.yaml" --mode "$mode")
      fi
      echo "== $log"
      "$python" examples/finetune.py "${settings[@]}" --root "$data/$dataset" --seed "$seed" --log "$log" \
        ${resume[@]+"${resume[@]}"} "$@"
    done
  done
done

"$python" scripts/summarize_runs.py "$runs"
