#!/usr/bin/env bash
# Sharded-training check for a machine with CUDA (run from the repository root; writes into ${OUT:-/tmp/fsdp_check}).
# 1. tests/test_training_fsdp.py with CUDA hidden: the 2-process FSDP2 test on gloo (as in CI, on more cores).
# 2. Accelerate's own GPU FSDP2 path (no CPU shim): 1 process on cuda:0 trains, checkpoints, resumes and exports;
#    the export must equal a plain single-process run's to float tolerance, and the resumed run the straight one.
# With 2+ GPUs set NPROC=2 to shard across them (the plain run then uses --multi_gpu with the same processes).
set -euo pipefail
OUT=${OUT:-/tmp/fsdp_check}; NPROC=${NPROC:-1}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
CUDA_VISIBLE_DEVICES= python -m pytest -q -p no:cacheprovider tests/test_training_fsdp.py 2>&1 | tail -3 | tee "$OUT/cpu_test.txt"

python - "$OUT" "$NPROC" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from test_training_fsdp import FSDP2_CPU_CONFIG
out, nproc = Path(sys.argv[1]), sys.argv[2]
(out / "fsdp2_gpu.yaml").write_text(FSDP2_CPU_CONFIG.replace("num_processes: 2", f"num_processes: {nproc}"))
from tiny_training import write_tiny_config
write_tiny_config(out)
PY
ARGS=(--backbone_config "$OUT/tiny_unet.json" --resolution 8 --train_batch_size 8 --max_train_steps 4
      --checkpointing_steps 2 --logging_steps 1 --validation_steps 3 --num_validation_images 4 --sample_steps 3
      --report_to none --overwrite)
if [ "$NPROC" = 1 ]; then PLAIN=(--num_processes 1); else PLAIN=(--multi_gpu --num_processes "$NPROC"); fi
python -m accelerate.commands.launch "${PLAIN[@]}" --mixed_precision no --dynamo_backend no training/train_edm.py \
    --output_dir "$OUT/plain" "${ARGS[@]}"
python -m accelerate.commands.launch --config_file "$OUT/fsdp2_gpu.yaml" training/train_edm.py \
    --output_dir "$OUT/fsdp" "${ARGS[@]}"
python -m accelerate.commands.launch --config_file "$OUT/fsdp2_gpu.yaml" training/train_edm.py \
    --output_dir "$OUT/resumed" "${ARGS[@]}" --resume_from_checkpoint "$OUT/fsdp/checkpoint-2"
python - "$OUT" <<'PY' | tee "$OUT/gpu_result.txt"
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file
out = Path(sys.argv[1])
name = "denoiser/diffusion_pytorch_model.safetensors"
plain, fsdp, resumed = (load_file(out / run / name) for run in ("plain", "fsdp", "resumed"))
assert (out / "fsdp/checkpoint-4/pytorch_model_fsdp_0").is_dir(), "the FSDP run did not write a sharded checkpoint"
worst = max((fsdp[k] - plain[k]).abs().max().item() for k in plain)
print(f"export vs plain: max abs difference {worst:.3g}")
assert all(torch.allclose(fsdp[k], plain[k], rtol=1e-4, atol=1e-4) for k in plain)
assert all(torch.equal(fsdp[k], resumed[k]) for k in fsdp), "resume is not exact"
print("FSDP2 on GPU: sharded checkpoint, exact resume, export equal to the plain run: OK")
PY
