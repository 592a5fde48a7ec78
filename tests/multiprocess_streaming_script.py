"""Run by the streaming tests (in-process, or under a 2-process launcher): train, recording what this rank saw.

Usage: multiprocess_streaming_script.py RANK_DIR [training arguments...]

Saved per rank (``RANK_DIR/rank<k>.pt``): the ``__key__`` of every example of every step (and its captions), a checksum of each step's
images (the pixels after decoding, resizing and cropping) and the final weights.
"""

import hashlib
import os
import sys
from pathlib import Path

import torch

import diffusers_edm.training.train as train_module


def recorded_run(argv: list[str]) -> dict:
    """``train_module.main(argv)``, recording each step's keys and image checksum."""
    keys: list[list[str]] = []
    images: list[str] = []
    captions: list[list[list[str]]] = []
    original_step = train_module.Trainer._train_step

    def recording_step(self, batch):
        keys.append(list(batch["keys"]))
        captions.append(batch.get("captions"))
        images.append(hashlib.sha256(batch["images"].cpu().numpy().tobytes()).hexdigest())
        return original_step(self, batch)

    train_module.Trainer._train_step = recording_step
    try:
        result = train_module.main(argv)
    finally:
        train_module.Trainer._train_step = original_step
    weights = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
    return {"keys": keys, "images": images, "captions": captions, "weights": weights, "global_step": result.global_step}


def main() -> None:
    rank_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    record = recorded_run(argv)
    rank = int(os.environ.get("RANK", "0"))  # the process group is closed by now; the launcher's variables remain
    rank_dir.mkdir(parents=True, exist_ok=True)
    torch.save(record, rank_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
