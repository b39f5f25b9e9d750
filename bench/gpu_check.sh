#!/usr/bin/env bash
# One prepared script for a lent GPU machine (see bench/RESULTS.md): an end-to-end `vft train`
# on Ray with one GPU worker (precision auto -> bf16, NCCL), bench/train_step.py eager and
# compiled (section `train`), bench/serve.py's GPU mode (section `serve`), and detection (section
# `det`: an end-to-end `vft train` of configs/shapes_detection.yaml on one GPU worker and
# bench/det_step.py against torchvision's reference loop), and the data path (section `data`:
# bench/data.py --device cuda, the pixel check of nvJPEG against Pillow and the batched decode
# rate, then `vft train` of ResNet-50 at 224 px on 20,000 JPEGs (500x375) with data.decode=gpu,
# eager and compiled, and with data.decode=cpu, against bench/train_step.py's synthetic step). Run from the
# repository root with the wheels from ../shared/tools/device-wheels in .whl (carried); logs
# land in $OUT. SECTIONS="train serve" (default) picks what runs; `cpu` runs bench/serve.py's
# CPU mode on two pinned cores of the (otherwise idle) device.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
find /tmp/site/ray/core -type f -exec chmod +x {} + 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"

SECTIONS=${SECTIONS:-train serve}

if [[ " $SECTIONS " == *" cpu "* ]]; then  # bench/serve.py's CPU mode pinned to 2 cores, on a quiet machine
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__)" | tee -a "$OUT/gpu.txt"
OMP_NUM_THREADS=2 taskset -c 0,1 timeout 280 python3 bench/serve.py 2>&1 | grep -v "^(\|INFO\|WARN" | tee "$OUT/serve_cpu_2cores.log"
fi

if [[ " $SECTIONS " == *" train "* ]]; then
python3 -m trainer.cli data digits --out /tmp/digits --size 64 > /dev/null
timeout 150 python3 -m trainer.cli train configs/digits.yaml data.train=/tmp/digits/train data.val=/tmp/digits/val \
  data.img_size=64 data.num_workers=4 scaling.num_workers=1 train.epochs=3 train.channels_last=true \
  run.storage=/tmp/runs --name gpu --quiet 2>&1 | grep -v "^\s*$" | tail -25 | tee "$OUT/e2e.log"
cp /tmp/runs/gpu/metrics.csv "$OUT/e2e_metrics.csv" 2>/dev/null
python3 -c "import json; m=json.load(open('/tmp/runs/gpu/best/meta.json')); print('meta.training', m['training'])" \
  | tee -a "$OUT/e2e.log"

timeout 150 python3 bench/train_step.py --device cuda 2>&1 | tee "$OUT/train_step_eager.log"
timeout 240 python3 bench/train_step.py --device cuda --compile --rounds 2 2>&1 | tee "$OUT/train_step_compiled.log"
fi

if [[ " $SECTIONS " == *" serve "* ]]; then
for model in resnet50 vit_base_patch16_224; do
  timeout 150 python3 bench/serve.py --device cuda --model $model --size 224 2>&1 | tee "$OUT/serve_gpu_$model.log"
done
fi

if [[ " $SECTIONS " == *" det "* ]]; then
python3 -m trainer.cli data shapes --task detection --out /tmp/shapes_det --n-train 800 --n-val 200 --size 256 > /dev/null
timeout 200 python3 -m trainer.cli train configs/shapes_detection.yaml data.train=/tmp/shapes_det/train \
  data.val=/tmp/shapes_det/val data.img_size=256 data.batch_size=32 data.num_workers=6 scaling.num_workers=1 \
  train.epochs=6 run.storage=/tmp/runs --name det --quiet 2>&1 | grep -v "^\s*$" | tail -25 | tee "$OUT/det_e2e.log"
cp /tmp/runs/det/metrics.csv "$OUT/det_metrics.csv" 2>/dev/null
cp /tmp/runs/det/plots/predictions.png "$OUT/det_predictions.png" 2>/dev/null
timeout 240 python3 bench/det_step.py --device cuda 2>&1 | grep -v Warn | tee "$OUT/det_step.log"
fi

if [[ " $SECTIONS " == *" data "* ]]; then
timeout 200 python3 bench/data.py --device cuda --images 512 2>&1 | grep -v Warn | tee "$OUT/data_device.log"
python3 - <<'PY'  # 20,000 photo-like JPEGs at 500x375: 3 encodings per class, hard-linked under 10,000 names
import os, sys
from pathlib import Path
sys.path.insert(0, "bench")
from data import write_photos
root = Path("/tmp/jpegs"); write_photos(root, (500, 375), 3)
for folder in root.iterdir():
    for j in range(3, 10000):
        os.link(folder / f"{j % 3}.jpg", folder / f"{j}.jpg")
PY
E2E="configs/digits.yaml model.name=resnet50 data.train=/tmp/jpegs data.val=null data.val_fraction=0.02
  data.img_size=224 data.crop_pct=0.875 data.augment.scale=[0.08,1.0] data.augment.rotation=0 data.augment.hflip=0.5
  data.batch_size=256 data.num_workers=12 scaling.num_workers=1 train.epochs=2 train.channels_last=true
  run.storage=/tmp/runs --quiet"
for run in "gpu false eager" "gpu true compiled" "cpu false eager"; do
  set -- $run
  timeout 240 python3 -m trainer.cli train $E2E data.decode=$1 train.compile=$2 --name "e2e_$1_$3" 2>&1 \
    | grep -v "^\s*$" | tail -6 | tee "$OUT/e2e_$1_$3.log"
  cp "/tmp/runs/e2e_$1_$3/metrics.csv" "$OUT/e2e_$1_$3.csv" 2>/dev/null
done
timeout 150 python3 bench/train_step.py --device cuda --models resnet50 2>&1 | tail -3 | tee "$OUT/step_resnet50.log"
fi
