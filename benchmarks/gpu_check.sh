#!/usr/bin/env bash
# GPU check for issue #18, run as is on a machine with one CUDA GPU (from any directory):
#   steps/s of the training command vs a bare loop (benchmarks/training_throughput.py, interleaved in one run) at
#   batch 256 on the "tiny" UNet at 64x64 in bf16, and the host synchronisations per step (benchmarks/host_syncs.py's
#   counter: zero outside logging steps), printed as tables. Outputs: benchmarks/results/training_throughput_gpu.*
#   (or $GPU_CHECK_OUTPUT). Exits non-zero if a step outside the logging steps synchronises the host.
set -euo pipefail
cd "$(dirname "$0")/.."
output_dir="${GPU_CHECK_OUTPUT:-benchmarks/results}"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"
python -m benchmarks.training_throughput --device cuda --resolution 64 --batch 256 --mixed-precision bf16 \
    --repetitions "${GPU_CHECK_REPETITIONS:-10}" --steps-per-block 10 --output-dir "$output_dir" --name training_throughput_gpu
python - "$output_dir/training_throughput_gpu.json" <<'PY'
import json, sys
record = json.load(open(sys.argv[1]))
rows = {row["variant"]: row for row in record["results"]}
bare = rows["bare loop"]["seconds_per_step"]
print("\n| loop | steps / s | ratio to bare | host syncs / step outside logging steps | at logging steps |")
print("|---|---|---|---|---|")
for name, row in rows.items():
    syncs = record["host_syncs"][name]
    logging = "-" if syncs["per_logging_step"] is None else f"{syncs['per_logging_step']:g}"
    print(f"| {name} | {row['steps_per_second']:.2f} | {row['seconds_per_step'] / bare:.3f} | "
          f"{syncs['max_outside_logging_steps']} | {logging} |")
throughput = record["throughput"]
print(f"\nratio command / bare (seconds per step): {throughput['median_paired_ratio']:.3f} median of the block pairs, "
      f"range {throughput['paired_ratio_spread'][0]:.3f}-{throughput['paired_ratio_spread'][1]:.3f}")
bad = {name: s["calls"] for name, s in record["host_syncs"].items() if s["max_outside_logging_steps"] > 0}
if bad:
    sys.exit(f"host synchronisations outside logging steps: {bad}")
PY
