#!/usr/bin/env bash
# Every GPU check of this project in one run, for a lent GPU machine: writes into $OUT (or ./gpu_out).
# The machine's own PyTorch runs the working tree (PYTHONPATH), nothing is installed.
set -uo pipefail
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$out/machine.txt"
python3 benchmarks/bench_realign.py --device cuda --reps 20 --warmup 3 \
    --json "$out/realign_gpu.json" --markdown 2>&1 | tee "$out/realign_gpu.txt"
python3 benchmarks/profile_gpu.py --out "$out/profile_gpu.json" 2>&1 | tee "$out/profile_gpu.txt"
