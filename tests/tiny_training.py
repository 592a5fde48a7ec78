"""Arguments for in-process training runs that take seconds: a tiny UNet config and the flags around it."""

from __future__ import annotations

import json
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState

TINY_UNET = {
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
}


def write_tiny_config(directory: Path) -> Path:
    """``directory/tiny_unet.json``: the tiny UNet as a ``--backbone_config`` file."""
    path = Path(directory) / "tiny_unet.json"
    path.write_text(json.dumps(TINY_UNET))
    return path


def tiny_args(output_dir: Path, config: Path, *extra: str) -> list[str]:
    """A 4-step run at 8x8, batch 8; later flags in ``extra`` override these (argparse keeps the last value)."""
    return [
        "--output_dir", str(output_dir), "--backbone_config", str(config), "--resolution", "8",
        "--train_batch_size", "8", "--max_train_steps", "4", "--checkpointing_steps", "2", "--logging_steps", "1",
        "--validation_steps", "3", "--num_validation_images", "4", "--sample_steps", "3", "--report_to", "none",
        *extra,
    ]


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons, so the next in-process run starts as a new process would."""
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
