"""Streaming training data (``--streaming``): images read from shards as training goes, split between processes, and
resumed exactly from a checkpoint.

The stream is ``datasets.load_dataset(..., streaming=True)`` of a Hub id or a local folder (parquet files are read by
the ``parquet`` builder, ``.tar`` files by the ``webdataset`` builder), optionally buffer-shuffled with the run's
seed (reseeded every epoch through ``set_epoch``) and split between processes by
``datasets.distributed.split_dataset_by_node`` (the same seed on every process, so that every process splits the
same shuffled stream). Each process reads its part as an endless sequence: when its part ends it starts the next
epoch on its own, so processes whose parts differ in length never wait for each other. Images are decoded and
converted exactly as the map-style path does (:func:`~diffusers_edm.training.data.image_to_tensor`).

Loader workers (``--dataloader_num_workers N``). A torch ``DataLoader`` runs ``N`` worker processes; ``datasets``
gives each worker its own shards of this process's part (so a process needs at least ``N`` shards) and each worker
reads, decodes and batches its shards as an endless sequence of its own epochs. The loader returns the workers'
batches round-robin, in worker order; every batch carries its worker's id and its position in that worker's stream,
and the training process records the position of each batch it consumes. A worker never runs out (it starts its
next epoch on its own), so the round-robin never skips a worker and the order of the batches is fixed by the data
alone. Without workers the training process reads its part itself, as the one worker 0.

Exact resume. Every process saves its position (``stream_state_<rank>.json`` in the checkpoint, next to
Accelerate's ``random_states_<rank>.pkl``): per worker, its epoch, the examples it consumed in that epoch, the
batches it delivered and, without a shuffle buffer, ``IterableDataset.state_dict()`` of its shards, which a resume
loads (``load_state_dict``) to continue from the same shard and row. ``datasets`` does not store a shuffle buffer's
content or its random generator in that state (a resume refills the buffer and yields other examples), so with
``--shuffle_buffer`` a resume replays each worker's epoch from its start and drops the examples consumed before the
checkpoint: exact, at the cost of reading them again (undecoded; images are decoded only when consumed). A resumed
loader starts its round-robin at worker 0 again; the training process holds back the batches of workers that are
ahead (at most one per worker) until the uninterrupted order reaches them.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from datasets.distributed import split_dataset_by_node

from .data import EMBEDDED_DATASET, GRAYSCALE_MODES, _entry_name, _image_feature, image_to_tensor, square_crop

logger = logging.getLogger(__name__)

STREAM_STATE_NAME = "stream_state_{}.json"
SHARD_FORMATS = ("parquet", "webdataset")


def validate_streaming_args(args: argparse.Namespace) -> None:
    """Refuse option combinations that a stream cannot serve, naming the options."""
    if not args.streaming:
        if args.shuffle_buffer is not None:
            raise ValueError("--shuffle_buffer applies to --streaming only (the map-style path shuffles every epoch).")
        return
    if args.train_data_dir is None and args.dataset_name in (None, EMBEDDED_DATASET):
        raise ValueError(
            "--streaming needs --dataset_name (a Hub id, or a folder of parquet files or WebDataset .tar shards) or "
            "--train_data_dir; the embedded digits can be written as shards with "
            "diffusers_edm.training.streaming.write_shards."
        )
    if getattr(args, "pretrained_model_name_or_path", None) is not None:
        raise ValueError(
            f"--streaming with --pretrained_model_name_or_path {args.pretrained_model_name_or_path!r}: fine-tuning "
            "measures sigma_data on and caches latents by the data set's indices, which a stream does not have; drop "
            "--streaming."
        )
    if getattr(args, "caption_column", None) is not None and (args.text_encoder is None or args.validation_prompts is None):
        raise ValueError(
            "--caption_column with --streaming needs --text_encoder (the local one is built from every caption of the "
            "data set, which a stream does not have before training) and --validation_prompts (by default the data "
            "set's first captions)."
        )
    if args.validation_split is not None:
        raise ValueError(
            "--validation_split (and --task classifier, which holds out a split) needs a data set of known size; "
            "a stream has none. Drop --streaming or --validation_split."
        )


def load_image_stream(args: argparse.Namespace) -> datasets.IterableDataset:
    """``datasets.load_dataset(..., streaming=True)`` of ``--dataset_name`` or ``--train_data_dir`` (imagefolder)."""
    if args.train_data_dir is not None:
        return datasets.load_dataset(
            "imagefolder", data_dir=args.train_data_dir, split="train", streaming=True, cache_dir=args.cache_dir
        )
    return datasets.load_dataset(
        args.dataset_name, args.dataset_config_name, split="train", streaming=True, cache_dir=args.cache_dir
    )


class ImageStream:
    """This process's part of a streamed image data set, as endless batches ``{"images": (B, C, H, W), "labels": (B,),
    "captions": [[...], ...], "keys": [...]}`` on ``device`` (``labels`` with ``label_column``; ``captions``, each
    example's list of captions, with ``caption_column``; ``keys`` when the rows have a ``__key__``, as WebDataset
    samples do), with each example's crop (:meth:`~diffusers_edm.training.data.SquareCrop.fields`, ``(B, 2)``).

    ``shuffle_buffer``: buffer-shuffle with ``seed`` (``seed + epoch`` in epoch ``epoch``) before splitting; ``None``
    reads the shards in their order. ``num_workers``: loader worker processes that read, decode and batch (0: this
    process does). Random crops come from a generator seeded by (seed, process, worker, epoch, position), so a
    resumed run crops as an uninterrupted one. ``state_dict`` / ``load_state_dict``: this process's position per
    worker (see the module's docstring). Each batch also holds ``"worker"``, the id of the worker that made it.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        image_column: str,
        resolution: int,
        channels: int | None,
        center_crop: bool = True,
        label_column: str | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        caption_column: str | None = None,
        shuffle_buffer: int | None = None,
        process_index: int = 0,
        num_processes: int = 1,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
    ):
        if dataset.features is None:
            raise ValueError("The stream declares no features (columns and types); --streaming needs a data set that does.")
        feature = _image_feature(dataset, image_column)
        if channels is None:
            if feature.mode is None:
                raise ValueError(
                    "--streaming cannot read every image header before training: pass --num_channels 1 or 3."
                )
            channels = 1 if feature.mode in GRAYSCALE_MODES else 3
        self.num_classes = 0
        if label_column is not None:
            if label_column not in dataset.column_names:
                raise ValueError(f"Label column {label_column!r} not in the data set; its columns are {dataset.column_names}.")
            label_feature = dataset.features[label_column]
            declared = label_feature.num_classes if isinstance(label_feature, datasets.ClassLabel) else None
            if num_classes is None and declared is None:
                raise ValueError(
                    f"Label column {label_column!r} holds {label_feature}, not a ClassLabel: pass --num_classes "
                    "(a stream's labels cannot be counted before training)."
                )
            if num_classes is not None and declared is not None and declared > num_classes:
                raise ValueError(f"Label column {label_column!r} has {declared} classes, more than --num_classes={num_classes}.")
            self.num_classes = num_classes or declared
        if caption_column is not None and caption_column not in dataset.column_names:
            raise ValueError(f"Caption column {caption_column!r} not in the data set; its columns are {dataset.column_names}.")
        self.caption_column = caption_column
        self.channels = channels
        self.decoder = datasets.Image(mode=feature.mode)
        # Undecoded rows: shuffling and a replay move bytes only, and a bad file is named by its path.
        stream = dataset.cast_column(image_column, datasets.Image(decode=False))
        if shuffle_buffer is not None:
            stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
        self.stream = split_dataset_by_node(stream, rank=process_index, world_size=num_processes)
        # split_dataset_by_node hands out whole shards when they divide evenly, else every k-th example of each shard.
        shards = dataset.num_shards // num_processes if dataset.num_shards % num_processes == 0 else dataset.num_shards
        if num_workers > shards:
            raise ValueError(
                f"--dataloader_num_workers {num_workers} with --streaming: each loader worker reads its own shards, and "
                f"this process's part of the stream has {shards} shard(s) ({dataset.num_shards} split between "
                f"{num_processes} process(es)); pass at most {shards} workers, or write the data in more shards."
            )
        self.image_column, self.label_column = image_column, label_column
        self.resolution, self.center_crop, self.seed = resolution, center_crop, seed
        self.shuffle_buffer, self.process_index, self.num_processes = shuffle_buffer, process_index, num_processes
        self.batch_size, self.device, self.num_workers = batch_size, torch.device(device), num_workers
        # Per worker, the position after the last batch the training consumed (None: the stream's start).
        self.positions: list[dict | None] = [None] * max(num_workers, 1)

    @classmethod
    def from_args(cls, args: argparse.Namespace, accelerator: Accelerator) -> "ImageStream":
        return cls(
            load_image_stream(args), args.image_column, args.resolution, args.num_channels, args.center_crop,
            args.label_column, args.num_classes, args.seed, getattr(args, "caption_column", None), args.shuffle_buffer,
            accelerator.process_index,
            accelerator.num_processes, args.train_batch_size, accelerator.device, args.dataloader_num_workers,
        )

    # -------------------------------------------------------------------------------------------- the training loop's view
    def set_epoch(self, epoch: int) -> None:
        """The training loop's epoch is ignored: each process counts its stream's epochs itself."""

    def __iter__(self) -> Iterator[dict]:
        """Batches on the device, in the order of an uninterrupted run, from the recorded positions on."""
        if self.num_workers == 0:
            made = self._worker_batches()
        else:
            made = iter(torch.utils.data.DataLoader(
                _WorkerBatches(self), batch_size=None, num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                # Its own generator: without one the loader draws its workers' seed from the global torch RNG.
                generator=torch.Generator().manual_seed(self.seed),
            ))
        held: dict[int, dict] = {}  # after a resume: batches of workers that are ahead of the uninterrupted order
        while True:
            # Round-robin in worker order: the next batch is the first worker's with the fewest batches delivered.
            worker = min(range(len(self.positions)), key=lambda index: (self._delivered(index), index))
            while worker not in held:
                batch = next(made)
                if batch["worker"] in held:
                    raise RuntimeError(f"Loader worker {batch['worker']} delivered two batches in one round.")
                held[batch["worker"]] = batch
            batch = held.pop(worker)
            position = batch.pop("position")
            expected = self._delivered(worker) + 1
            if position["batches"] != expected:
                raise RuntimeError(f"Loader worker {worker} delivered its batch {position['batches']}, not {expected}.")
            self.positions[worker] = position
            yield {key: value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                   for key, value in batch.items()}  # host strings stay lists (one list of captions per example)

    def _delivered(self, worker: int) -> int:
        position = self.positions[worker]
        return 0 if position is None else position["batches"]

    # -------------------------------------------------------------------------------------------- in a worker
    def _worker_batches(self) -> Iterator[dict]:
        """This worker's endless batches on the host, each with ``"worker"`` and its ``"position"`` after it: in a
        loader worker (``datasets`` gives it its own shards), or in this process as worker 0."""
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        position = self.positions[worker] or {"epoch": 0, "consumed": 0, "batches": 0, "dataset_state": None}
        if position["dataset_state"] is not None:
            self.stream.load_state_dict(position["dataset_state"])
        rows = self._endless(worker, position["epoch"], position["consumed"])
        batches = position["batches"]
        while True:
            samples = [next(rows) for _ in range(self.batch_size)]
            items = [self._item(sample, worker) for sample in samples]
            lists = {key: [item.pop(key) for item in items] for key in ("keys", "captions") if key in items[0]}
            batches += 1
            _, epoch, index = samples[-1]
            position = {
                "epoch": epoch, "consumed": index + 1, "batches": batches,
                "dataset_state": self.stream.state_dict() if self.shuffle_buffer is None else None,
            }
            yield {**torch.utils.data.default_collate(items), **lists, "worker": worker, "position": position}

    def _endless(self, worker: int, epoch: int, consumed: int) -> Iterator[tuple[dict, int, int]]:
        """``(row, epoch, index in the epoch)`` forever, epoch after epoch, from ``consumed`` examples into ``epoch``."""
        while True:
            self.stream.set_epoch(epoch)
            rows = iter(self.stream)
            if self.shuffle_buffer is not None and consumed:
                # Replay: the shuffled stream of this epoch is a function of (seed, epoch), its buffer is not stored.
                rows = itertools.islice(rows, consumed, None)
            for row in rows:
                yield row, epoch, consumed
                consumed += 1
            if consumed == 0:  # from the epoch's start, nothing
                raise ValueError(
                    f"Process {self.process_index} of {self.num_processes} (loader worker {worker}) received no example "
                    "of the stream: it has fewer examples (or shards) than processes (and workers)."
                )
            epoch, consumed = epoch + 1, 0

    def _item(self, sample: tuple[dict, int, int], worker: int) -> dict:
        row, epoch, position = sample
        entry = row[self.image_column]
        name = _entry_name(entry, position)
        try:
            image = self.decoder.decode_example(entry)
        except Exception as error:  # PIL raises many types for bad files
            raise ValueError(f"Cannot read training image {name}: {error}") from error
        rng = None if self.center_crop else random.Random(f"{self.seed}-{self.process_index}-{worker}-{epoch}-{position}")
        try:
            crop = square_crop(*image.size, self.resolution, self.center_crop, rng)
            images = image_to_tensor(image, self.resolution, self.center_crop, self.channels, crop=crop)
            item = {"images": images, **crop.fields()}
        except ValueError as error:
            raise ValueError(f"Training image {name}: {error}") from error
        if self.label_column is not None:
            label = int(row[self.label_column])
            if not 0 <= label < self.num_classes:
                raise ValueError(f"Training image {name}: label {label} is outside [0, {self.num_classes}).")
            item["labels"] = label
        if self.caption_column is not None:
            captions = row[self.caption_column]
            captions = [captions] if isinstance(captions, str) else captions
            if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
                raise ValueError(
                    f"Training image {name}: caption column {self.caption_column!r} holds {captions!r:.80}, not a "
                    "string or a non-empty list of strings."
                )
            item["captions"] = captions
        if "__key__" in row:
            item["keys"] = row["__key__"]
        return item

    # -------------------------------------------------------------------------------------------- position
    def state_dict(self) -> dict:
        """This process's position: per worker, its epoch, the examples consumed in it, the batches delivered and,
        without a shuffle buffer, the ``IterableDataset.state_dict()`` of its shards (None: not started)."""
        return {
            "workers": list(self.positions), "process_index": self.process_index,
            "num_processes": self.num_processes, "num_workers": self.num_workers, "shuffle_buffer": self.shuffle_buffer,
        }

    def load_state_dict(self, state: dict) -> None:
        missing = sorted({"workers", "process_index", "num_processes", "num_workers", "shuffle_buffer"} - state.keys())
        if missing:  # e.g. a position written before the per-worker format
            raise ValueError(f"The stream position lacks {missing}: it cannot say where each loader worker stood.")
        for name in ("process_index", "num_processes", "num_workers", "shuffle_buffer"):
            if state[name] != getattr(self, name):
                option = " (--dataloader_num_workers: each worker's position is its own)" if name == "num_workers" else ""
                raise ValueError(
                    f"The stream position was saved with {name}={state[name]!r}, this run has "
                    f"{getattr(self, name)!r}{option}."
                )
        self.positions = list(state["workers"])

    def register_for_checkpointing(self, accelerator: Accelerator) -> None:
        """Save and load this process's ``stream_state_<rank>.json`` with every ``accelerator.save_state`` /
        ``load_state`` (their hooks run on every process)."""
        file_name = STREAM_STATE_NAME.format(self.process_index)

        def save(models: list, weights: list, output_dir: str) -> None:
            Path(output_dir, file_name).write_text(json.dumps(self.state_dict(), indent=1))

        def load(models: list, input_dir: str) -> None:
            path = Path(input_dir, file_name)
            try:
                state = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(
                    f"Checkpoint {input_dir!r}: cannot read this process's stream position {file_name} ({error}); "
                    "a resume without it would not see the same images."
                ) from error
            self.load_state_dict(state)

        accelerator.register_save_state_pre_hook(save)
        accelerator.register_load_state_pre_hook(load)


class _WorkerBatches(torch.utils.data.IterableDataset):
    """What a loader worker iterates: its own batches of ``stream`` (see :meth:`ImageStream._worker_batches`)."""

    def __init__(self, stream: ImageStream):
        self.stream = stream

    def __iter__(self) -> Iterator[dict]:
        return self.stream._worker_batches()


def write_shards(
    dataset: datasets.Dataset,
    directory: str | Path,
    num_shards: int,
    shard_format: str = "parquet",
    image_column: str = "image",
    label_column: str | None = "label",
) -> list[Path]:
    """Write ``dataset`` as ``num_shards`` contiguous shards that ``--streaming --dataset_name DIRECTORY`` reads.

    ``"parquet"``: ``train-0000i-of-0000n.parquet`` files with every column and its features, plus a ``__key__``
    column (the row's number, ``"%08d"``). ``"webdataset"``: ``train-0000i.tar`` files holding, per row,
    ``KEY.png`` (the image, PNG-encoded) and ``KEY.cls`` (the label as decimal
    text), read back as the columns ``png`` and ``cls``. Returns the paths written. E.g. the embedded digits:
    ``write_shards(embedded_digits_dataset(), "digits-shards", 4)``.
    """
    if shard_format not in SHARD_FORMATS:
        raise ValueError(f"shard_format must be one of {SHARD_FORMATS}, got {shard_format!r}.")
    if not 1 <= num_shards <= len(dataset):
        raise ValueError(f"num_shards must lie in [1, {len(dataset)}] (the number of rows), got {num_shards!r}.")
    _image_feature(dataset, image_column)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dataset = dataset.add_column("__key__", [f"{index:08d}" for index in range(len(dataset))])
    written = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards, index, contiguous=True)
        if shard_format == "parquet":
            path = directory / f"train-{index:05d}-of-{num_shards:05d}.parquet"
            shard.to_parquet(str(path))
        else:
            path = directory / f"train-{index:05d}.tar"
            with tarfile.open(path, "w") as tar:
                for row in shard:
                    buffer = io.BytesIO()
                    row[image_column].save(buffer, format="PNG")
                    files = [("png", buffer.getvalue())]
                    if label_column is not None:
                        files.append(("cls", str(int(row[label_column])).encode()))
                    for extension, data in files:
                        info = tarfile.TarInfo(f"{row['__key__']}.{extension}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        written.append(path)
    return written
