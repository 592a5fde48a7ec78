"""Run by the streaming tests (in-process, or under a 2-process launcher): train, recording what this rank saw.

Usage: multiprocess_streaming_script.py RUNS.json, a list of ``[RANK_DIR, [training arguments...]]`` run one after
the other in the same launched processes (e.g. an uninterrupted run, then a run resumed from its checkpoint): one
launch, one start-up of the processes, for several runs.

Saved per run and rank (``RANK_DIR/rank<k>.pt``): the ``__key__`` of every example of every step (and its captions),
the loader worker that made each step's batch, a checksum of each step's images (the pixels after decoding, resizing
and cropping) and the final weights.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import datasets
import torch
from accelerate.state import PartialState

import diffusers_edm.training.train as train_module
from tiny_training import reset_accelerate_state

#: datasets waits this long (5 s by default) each time a parquet stream's iterator ends, i.e. at every epoch of a
#: stream, for pyarrow's scanner threads (apache/arrow#39862: a crash when the interpreter exits right after a scan);
#: the arrow report finds 0.1 s enough, and the tiny test epochs would otherwise spend most of their time waiting.
ARROW_SHUTDOWN_WAIT = 0.1


def recorded_run(argv: list[str]) -> dict:
    """``train_module.main(argv)``, recording each step's keys and image checksum."""
    keys: list[list[str]] = []
    images: list[str] = []
    captions: list[list[list[str]]] = []
    workers: list[int] = []
    original_step = train_module.Trainer._train_step

    def recording_step(self, batch):
        keys.append(list(batch["keys"]))
        captions.append(batch.get("captions"))
        workers.append(batch["worker"])
        images.append(hashlib.sha256(batch["images"].cpu().numpy().tobytes()).hexdigest())
        return original_step(self, batch)

    train_module.Trainer._train_step = recording_step
    try:
        result = train_module.main(argv)
    finally:
        train_module.Trainer._train_step = original_step
    weights = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
    return {"keys": keys, "images": images, "captions": captions, "workers": workers, "weights": weights,
            "global_step": result.global_step}


def main() -> None:
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = ARROW_SHUTDOWN_WAIT
    # One process group for all the runs: a group initialised again after Accelerate's end_training destroyed it
    # would rendezvous through the launcher's store under the first group's keys, and wait for ever.
    PartialState.destroy_process_group = lambda self, group=None: None
    rank = int(os.environ.get("RANK", "0"))
    for rank_dir, argv in json.loads(Path(sys.argv[1]).read_text()):
        reset_accelerate_state()  # each run starts as in a new process, on the same process group
        record = recorded_run(argv)
        Path(rank_dir).mkdir(parents=True, exist_ok=True)
        torch.save(record, Path(rank_dir) / f"rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
