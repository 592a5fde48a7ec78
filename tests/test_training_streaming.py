"""``--streaming``: training images read from local parquet / WebDataset shards, split between processes, resumed
exactly from a checkpoint (issue 18, item 2). Tiny runs: 40 digits in 4 shards of 10, batch 8 per process."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_edm.training.data import ImageDataset, digit_captions, embedded_digits_dataset
from diffusers_edm.training.streaming import write_shards
from multiprocess_streaming_script import ARROW_SHUTDOWN_WAIT, recorded_run
from tiny_training import reset_accelerate_state, tiny_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(autouse=True)
def short_arrow_shutdown_wait(monkeypatch):
    """datasets' 5 s wait at the end of every parquet stream's pass (see multiprocess_streaming_script.py)."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", ARROW_SHUTDOWN_WAIT)

NUM_EXAMPLES, NUM_SHARDS, BATCH = 40, 4, 8
LABEL_COLUMN = {"parquet": "label", "webdataset": "cls"}
IMAGE_COLUMN = {"parquet": "image", "webdataset": "png"}
BUILDER = {"parquet": "parquet", "webdataset": "webdataset"}
SCRIPT = Path(__file__).with_name("multiprocess_streaming_script.py")


def digits() -> datasets.Dataset:
    return embedded_digits_dataset().select(range(NUM_EXAMPLES))


@pytest.fixture(params=["parquet", "webdataset"])
def shards(request, tmp_path) -> tuple[str, Path]:
    directory = tmp_path / f"shards-{request.param}"
    write_shards(digits(), directory, NUM_SHARDS, request.param)
    return request.param, directory


def stream_args(output_dir: Path, config: Path, shard_format: str, directory: Path, *extra: str) -> list[str]:
    labels = ["--label_column", LABEL_COLUMN[shard_format], "--label_dropout", "0.2"]
    if shard_format == "webdataset":
        labels += ["--num_classes", "10"]  # its `cls` column is a plain integer, not a ClassLabel
    return tiny_args(
        output_dir, config, "--streaming", "--dataset_name", str(directory), "--image_column", IMAGE_COLUMN[shard_format],
        "--num_channels", "1", *labels, "--random_flip", "--max_train_steps", "10", "--checkpointing_steps", "3",
        "--validation_steps", "1000", *extra,
    )


def epochs(keys: list[list[str]], per_epoch: int) -> list[list[str]]:
    flat = [key for step in keys for key in step]
    return [flat[i : i + per_epoch] for i in range(0, len(flat) - per_epoch + 1, per_epoch)]


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


# ------------------------------------------------------------------------------------------------ shards
def test_written_shards_are_read_back_by_the_parquet_and_webdataset_builders(shards):
    shard_format, directory = shards
    stream = datasets.load_dataset(str(directory), split="train", streaming=True)
    assert stream.info.builder_name == BUILDER[shard_format]  # a folder of .tar files is a WebDataset
    assert stream.num_shards == NUM_SHARDS
    source = digits()
    rows = list(stream)
    assert [row["__key__"] for row in rows] == [f"{i:08d}" for i in range(NUM_EXAMPLES)]
    for index, row in enumerate(rows):
        assert int(row[LABEL_COLUMN[shard_format]]) == source[index]["label"]
        assert np.array_equal(np.asarray(row[IMAGE_COLUMN[shard_format]]), np.asarray(source[index]["image"]))


def test_write_shards_refuses_a_bad_format_or_count(tmp_path):
    with pytest.raises(ValueError, match="shard_format"):
        write_shards(digits(), tmp_path, 2, "tfrecord")
    with pytest.raises(ValueError, match="num_shards"):
        write_shards(digits(), tmp_path, NUM_EXAMPLES + 1)


# ------------------------------------------------------------------------------------------------ one process
@pytest.mark.parametrize("shuffle_buffer", [None, "16"])
def test_one_process_reads_each_example_once_per_epoch_and_resumes_exactly(tmp_path, tiny_config, shards, shuffle_buffer):
    shard_format, directory = shards
    extra = ["--shuffle_buffer", shuffle_buffer] if shuffle_buffer else []
    straight = recorded_run(stream_args(tmp_path / "straight", tiny_config, shard_format, directory, *extra))
    # 10 steps x 8 = 80 examples: two whole epochs of the 40, each example once per epoch
    assert len(straight["keys"]) == 10 and all(len(step) == BATCH for step in straight["keys"])
    every = [f"{i:08d}" for i in range(NUM_EXAMPLES)]
    first, second = epochs(straight["keys"], NUM_EXAMPLES)
    assert sorted(first) == sorted(second) == every
    if shuffle_buffer:  # shuffled, and reshuffled with another seed in the second epoch
        assert first != every and second != first
    else:  # the shards' order
        assert first == second == every
    # the images are those of the map-style path (training/data.py's conversion), for the same keys
    mapped = ImageDataset(digits(), "image", 8, 1, True, "label", 0)
    by_key = {f"{i:08d}": mapped[i]["images"] for i in range(NUM_EXAMPLES)}
    assert straight["images"][0] == hashlib.sha256(
        torch.stack([by_key[key] for key in straight["keys"][0]]).numpy().tobytes()
    ).hexdigest()

    # a new run resumes from the uninterrupted run's checkpoint at step 3 (as after a kill there: that run went on)
    reset_accelerate_state()
    resumed_dir = tmp_path / "resumed"
    resumed = recorded_run(stream_args(resumed_dir, tiny_config, shard_format, directory, *extra,
                                       "--resume_from_checkpoint", str(tmp_path / "straight" / "checkpoint-3")))
    assert resumed["keys"] == straight["keys"][3:], "the resumed run reads other examples"
    assert resumed["images"] == straight["images"][3:], "the resumed run sees other pixels"
    assert_same_weights(resumed["weights"], straight["weights"], "final weights")
    for relative in ("checkpoint-9/model.safetensors", "denoiser/diffusion_pytorch_model.safetensors"):
        assert_same_weights(load_file(resumed_dir / relative), load_file(tmp_path / "straight" / relative), relative)


def test_two_loader_workers_read_their_own_shards_round_robin_and_resume_exactly(tmp_path, tiny_config):
    """``--dataloader_num_workers 2`` over 4 parquet shards: each worker reads 2 whole shards (20 examples an epoch of
    its own), the batches alternate between the workers, every example comes once per epoch, and a resume from a
    checkpoint where the workers stand at different positions (worker 0 two batches in, worker 1 one) continues with
    the very examples, pixels and weights of the uninterrupted run."""
    directory = tmp_path / "pq"
    write_shards(digits(), directory, NUM_SHARDS)
    extra = ("--shuffle_buffer", "16", "--dataloader_num_workers", "2")
    straight = recorded_run(stream_args(tmp_path / "straight", tiny_config, "parquet", directory, *extra))
    assert straight["workers"] == [step % 2 for step in range(10)], "the batches do not alternate between the workers"
    shards = {index: {f"{i:08d}" for i in range(10 * index, 10 * index + 10)} for index in range(NUM_SHARDS)}
    per_worker = [epochs([keys for keys, w in zip(straight["keys"], straight["workers"]) if w == worker], 20)
                  for worker in range(2)]
    every = {f"{i:08d}" for i in range(NUM_EXAMPLES)}
    for epoch in range(2):  # 5 batches of 8 per worker: two of its epochs
        part0, part1 = set(per_worker[0][epoch]), set(per_worker[1][epoch])
        assert len(part0) == len(part1) == 20, "an example twice in one worker's epoch"
        assert not part0 & part1 and part0 | part1 == every, "the workers' parts overlap or miss examples"
        for part in (part0, part1):  # whole shards: a worker reads its own files
            assert sum(part >= shard for shard in shards.values()) == 2
    # the pixels are those of the map-style path for the same keys, whichever worker decoded them
    mapped = ImageDataset(digits(), "image", 8, 1, True, "label", 0)
    by_key = {f"{i:08d}": mapped[i]["images"] for i in range(NUM_EXAMPLES)}
    for step in (0, 1):
        assert straight["images"][step] == hashlib.sha256(
            torch.stack([by_key[key] for key in straight["keys"][step]]).numpy().tobytes()
        ).hexdigest()

    reset_accelerate_state()
    resumed_dir = tmp_path / "resumed"
    resumed = recorded_run(stream_args(resumed_dir, tiny_config, "parquet", directory, *extra,
                                       "--resume_from_checkpoint", str(tmp_path / "straight" / "checkpoint-3")))
    assert resumed["workers"] == straight["workers"][3:]
    assert resumed["keys"] == straight["keys"][3:], "the resumed run reads other examples"
    assert resumed["images"] == straight["images"][3:], "the resumed run sees other pixels"
    assert_same_weights(resumed["weights"], straight["weights"], "final weights")
    for relative in ("checkpoint-9/model.safetensors", "denoiser/diffusion_pytorch_model.safetensors"):
        assert_same_weights(load_file(resumed_dir / relative), load_file(tmp_path / "straight" / relative), relative)


def test_captions_stream_with_their_images_and_resume_exactly(tmp_path, tiny_config):
    """Text-conditional training from a stream: each example's captions arrive with it (the embedded digits' captions
    name the label), and a resume continues with the same examples, caption draws and weights."""
    from diffusers_edm.training.captions import build_local_text_encoder, build_local_tokenizer

    directory = tmp_path / "pq"
    write_shards(digits(), directory, NUM_SHARDS)
    tokenizer = build_local_tokenizer([c for label in range(10) for c in digit_captions(label)])
    tokenizer.save_pretrained(tmp_path / "encoder")
    build_local_text_encoder(tokenizer, 0).save_pretrained(tmp_path / "encoder")
    (tmp_path / "unet.json").write_text(json.dumps({
        "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    }))

    def run(output_dir: Path, *extra: str) -> dict:
        reset_accelerate_state()
        return recorded_run(tiny_args(
            output_dir, tmp_path / "unet.json", "--streaming", "--dataset_name", str(directory), "--num_channels", "1",
            "--caption_column", "text", "--text_encoder", str(tmp_path / "encoder"), "--validation_prompts", "seven",
            "--shuffle_buffer", "16", "--proportion_empty_prompts", "0.5", "--max_train_steps", "6",
            "--checkpointing_steps", "3", "--validation_steps", "1000", *extra,
        ))

    straight = run(tmp_path / "straight")
    labels = {f"{i:08d}": label for i, label in enumerate(digits()["label"])}
    for keys, captions in zip(straight["keys"], straight["captions"]):
        assert captions == [digit_captions(labels[key]) for key in keys]
    resumed = run(tmp_path / "resumed", "--resume_from_checkpoint", str(tmp_path / "straight" / "checkpoint-3"))
    assert resumed["keys"] == straight["keys"][3:] and resumed["captions"] == straight["captions"][3:]
    assert_same_weights(resumed["weights"], straight["weights"], "final weights")


# ------------------------------------------------------------------------------------------------ two processes
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two(runs: list[tuple[Path, list[str]]]) -> list[list[dict]]:
    """One 2-process launch that trains ``runs`` (``(rank_dir, arguments)``) one after the other; per run, what each
    rank saw."""
    runs_file = runs[0][0].parent / "runs.json"
    runs_file.write_text(json.dumps([[str(rank_dir), args] for rank_dir, args in runs]))
    command = [
        # --multi_gpu is accelerate's torchrun launcher; on a machine without CUDA the package runs it on gloo/CPU
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(SCRIPT), str(runs_file),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired as error:  # say where it stood
        output = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part  # bytes, even with text=True
                         for part in (error.stdout or "", error.stderr or ""))
        raise AssertionError(f"the 2-process launch ran past 400 s: {output[-4000:]}") from None
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return [[torch.load(rank_dir / f"rank{rank}.pt", weights_only=False) for rank in range(2)] for rank_dir, _ in runs]


def test_two_processes_read_disjoint_parts_and_resume_exactly(tmp_path, tiny_config):
    """One launch of 2 processes trains, for parquet and for tar shards, an uninterrupted run and a run resumed from
    its step-3 checkpoint. Parquet: shuffled, read by each process itself (a resume replays the epoch). Tar: in shard
    order, read by 2 loader workers per process (each worker a shard of its process's 2; a resume loads datasets'
    state per worker, with worker 0 a batch ahead of worker 1)."""
    formats = {"parquet": ("--shuffle_buffer", "16"), "webdataset": ("--dataloader_num_workers", "2")}
    runs, checkpoints = [], {}
    for shard_format, extra in formats.items():
        directory = tmp_path / f"shards-{shard_format}"
        write_shards(digits(), directory, NUM_SHARDS, shard_format)
        out = tmp_path / f"straight-{shard_format}"
        checkpoints[shard_format] = out / "checkpoint-3"
        extra = (*extra, "--max_train_steps", "6")
        runs.append((tmp_path / f"straight-{shard_format}-ranks",
                     stream_args(out, tiny_config, shard_format, directory, *extra)))
        runs.append((tmp_path / f"resumed-{shard_format}-ranks", stream_args(
            tmp_path / f"resumed-{shard_format}", tiny_config, shard_format, directory, *extra,
            "--resume_from_checkpoint", str(checkpoints[shard_format]))))
    records = iter(launch_two(runs))
    every = {f"{i:08d}" for i in range(NUM_EXAMPLES)}
    for shard_format in formats:
        straight, resumed = next(records), next(records)
        workers = 2 if shard_format == "webdataset" else 1
        # 4 shards, 2 processes: 2 whole shards (20 examples) each, split between its workers; an epoch of a worker is
        # its shards once; 6 steps x 8 = 48 examples a process: 2 whole epochs of each worker
        parts = []
        for rank in range(2):
            assert straight[rank]["workers"] == [step % workers for step in range(6)]
            for worker in range(workers):
                keys = [keys for keys, w in zip(straight[rank]["keys"], straight[rank]["workers"]) if w == worker]
                parts.append(epochs(keys, NUM_EXAMPLES // 2 // workers)[:2])
        for epoch in range(2):
            seen = [set(part[epoch]) for part in parts]
            assert all(len(part) == NUM_EXAMPLES // 2 // workers for part in seen), "an example twice in one epoch"
            assert sum(map(len, seen)) == NUM_EXAMPLES and set().union(*seen) == every, (
                f"{shard_format}: the processes' (and workers') parts overlap or miss examples")
        assert_same_weights(straight[0]["weights"], straight[1]["weights"], "the processes' weights")

        checkpoint = checkpoints[shard_format]
        assert sorted(p.name for p in checkpoint.glob("stream_state_*.json")) == ["stream_state_0.json", "stream_state_1.json"]
        for rank in range(2):
            what = f"{shard_format}, rank {rank}"
            assert resumed[rank]["workers"] == straight[rank]["workers"][3:]
            assert resumed[rank]["keys"] == straight[rank]["keys"][3:], f"{what} reads other examples after the resume"
            assert resumed[rank]["images"] == straight[rank]["images"][3:], f"{what} sees other pixels after the resume"
            assert_same_weights(resumed[rank]["weights"], straight[rank]["weights"], f"{what}: final weights")


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shuffle_buffer", "4"], "--shuffle_buffer applies to --streaming only"),
        (["--streaming"], "--streaming needs --dataset_name"),
        (["--streaming", "--dataset_name", "DIR", "--validation_split", "0.1"], "--validation_split"),
        (["--streaming", "--dataset_name", "DIR", "--task", "classifier", "--label_column", "label"], "--task classifier"),
        (["--streaming", "--dataset_name", "DIR", "--caption_column", "text"], "--caption_column with --streaming needs"),
        (["--streaming", "--dataset_name", "DIR", "--pretrained_model_name_or_path", "DIR"],
         "--streaming with --pretrained_model_name_or_path"),
        (["--streaming", "--dataset_name", "DIR", "--shuffle_buffer", "0"], "--shuffle_buffer must be an integer >= 1"),
        (["--streaming", "--dataset_name", "DIR", "--shuffle_buffer", "-3"], "--shuffle_buffer must be an integer >= 1"),
    ],
)
def test_streaming_options_that_cannot_work_are_refused_by_name(tmp_path, extra, message):
    from diffusers_edm.training.arguments import parse_args

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_args(["--output_dir", str(tmp_path / "out"), *[str(tmp_path) if a == "DIR" else a for a in extra]])


@pytest.mark.parametrize(
    ("drop", "message"), [("--num_channels", "pass --num_channels"), ("--num_classes", "pass --num_classes")]
)
def test_a_stream_without_declared_channels_or_classes_needs_them_passed(tmp_path, tiny_config, drop, message):
    directory = tmp_path / "tar"
    write_shards(digits(), directory, NUM_SHARDS, "webdataset")
    args = stream_args(tmp_path / "out", tiny_config, "webdataset", directory)
    position = args.index(drop)
    del args[position : position + 2]
    with pytest.raises(ValueError, match=message):
        from diffusers_edm.training.train import train
        from diffusers_edm.training.arguments import parse_args

        train(parse_args(args))


@pytest.mark.parametrize(("num_processes", "workers", "message"), [
    (1, 5, r"--dataloader_num_workers 5 .* 4 shard\(s\) \(4 split between 1 process"),
    (2, 3, r"--dataloader_num_workers 3 .* 2 shard\(s\) \(4 split between 2 process"),  # 2 whole shards a process
    (3, 5, r"--dataloader_num_workers 5 .* 4 shard\(s\) \(4 split between 3 process"),  # every 3rd example of all 4
])
def test_more_loader_workers_than_a_process_has_shards_are_refused_naming_both(tmp_path, num_processes, workers, message):
    from diffusers_edm.training.streaming import ImageStream

    write_shards(digits(), tmp_path / "pq", NUM_SHARDS)
    stream = datasets.load_dataset(str(tmp_path / "pq"), split="train", streaming=True)
    with pytest.raises(ValueError, match=message):
        ImageStream(stream, "image", 8, 1, num_processes=num_processes, num_workers=workers)
    ImageStream(stream, "image", 8, 1, num_processes=num_processes, num_workers=workers - 1)  # one fewer is fine


def test_a_resume_with_another_shuffle_buffer_is_refused(tmp_path, tiny_config):
    directory = tmp_path / "pq"
    write_shards(digits(), directory, NUM_SHARDS)
    out = tmp_path / "out"
    recorded_run(stream_args(out, tiny_config, "parquet", directory, "--max_train_steps", "3"))
    reset_accelerate_state()
    with pytest.raises(ValueError, match="--shuffle_buffer: None in the checkpoint, 8 now"):
        recorded_run(stream_args(out, tiny_config, "parquet", directory, "--shuffle_buffer", "8",
                                 "--resume_from_checkpoint", "latest"))
