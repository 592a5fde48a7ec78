"""Streaming training data (``--streaming``): images read from shards as training goes, split between processes, and
resumed exactly from a checkpoint.

The stream is ``datasets.load_dataset(..., streaming=True)`` of a Hub id or a local folder (parquet files are read by
the ``parquet`` builder, ``.tar`` files by the ``webdataset`` builder), optionally buffer-shuffled with the run's
seed (reseeded every epoch through ``set_epoch``) and split between processes by
``datasets.distributed.split_dataset_by_node`` (the same seed on every process, so that every process splits the
same shuffled stream). Each process reads its part as an endless sequence: when its part ends it starts the next
epoch on its own, so processes whose parts differ in length never wait for each other. Images are decoded and
converted exactly as the map-style path does (:func:`~diffusers_edm.training.data.image_to_tensor`).

Exact resume. Every process saves its own position (``stream_state_<rank>.json`` in the checkpoint, next to
Accelerate's ``random_states_<rank>.pkl``): its epoch, the examples it consumed in that epoch and, without a
shuffle buffer, ``IterableDataset.state_dict()``, which a resume loads (``load_state_dict``) to continue from the
same shard and row. ``datasets`` does not store a shuffle buffer's content or its random generator in that state (a
resume refills the buffer and yields other examples), so with ``--shuffle_buffer`` a resume replays the epoch's
stream from its start and drops the examples consumed before the checkpoint: exact, at the cost of reading them
again (undecoded; images are decoded only when consumed).
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
    if args.dataloader_num_workers > 0:
        raise ValueError(
            f"--dataloader_num_workers {args.dataloader_num_workers} with --streaming: a stream is read in the "
            "training process in this version (its position must be checkpointed exactly); pass 0."
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
    reads the shards in their order. Random crops come from a generator seeded by (seed, process, epoch, position),
    so a resumed run crops as an uninterrupted one. ``state_dict`` / ``load_state_dict``: this process's position
    (see the module's docstring).
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
        self.image_column, self.label_column = image_column, label_column
        self.resolution, self.center_crop, self.seed = resolution, center_crop, seed
        self.shuffle_buffer, self.process_index, self.num_processes = shuffle_buffer, process_index, num_processes
        self.batch_size, self.device = batch_size, torch.device(device)
        self.epoch, self.consumed = 0, 0
        self._examples: Iterator[tuple[dict, int, int]] | None = None
        self._pending_position: dict | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, accelerator: Accelerator) -> "ImageStream":
        return cls(
            load_image_stream(args), args.image_column, args.resolution, args.num_channels, args.center_crop,
            args.label_column, args.num_classes, args.seed, getattr(args, "caption_column", None), args.shuffle_buffer,
            accelerator.process_index,
            accelerator.num_processes, args.train_batch_size, accelerator.device,
        )

    # -------------------------------------------------------------------------------------------- the training loop's view
    def set_epoch(self, epoch: int) -> None:
        """The training loop's epoch is ignored: each process counts its stream's epochs itself."""

    def __iter__(self) -> Iterator[dict]:
        while True:
            items = [self._item(next(self._rows())) for _ in range(self.batch_size)]
            lists = {key: [item.pop(key) for item in items] for key in ("keys", "captions") if key in items[0]}
            batch = torch.utils.data.default_collate(items)
            batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
            yield {**batch, **lists}  # host strings stay lists (one list of captions per example)

    # -------------------------------------------------------------------------------------------- rows
    def _rows(self) -> Iterator[tuple[dict, int, int]]:
        if self._examples is None:
            self._examples = self._endless()
        return self._examples

    def _endless(self) -> Iterator[tuple[dict, int, int]]:
        """``(row, epoch, position)`` forever, epoch after epoch, from the current (possibly restored) position."""
        while True:
            self.stream.set_epoch(self.epoch)
            rows = iter(self.stream)
            if self.shuffle_buffer is not None and self.consumed:
                # Replay: the shuffled stream of this epoch is a function of (seed, epoch), its buffer is not stored.
                rows = itertools.islice(rows, self.consumed, None)
            for row in rows:
                position = self.consumed
                self.consumed += 1
                yield row, self.epoch, position
            if self.consumed == 0:  # from the epoch's start, nothing
                raise ValueError(
                    f"Process {self.process_index} of {self.num_processes} received no example of the stream: it "
                    "has fewer examples (or shards) than processes."
                )
            self.epoch, self.consumed = self.epoch + 1, 0

    def _item(self, sample: tuple[dict, int, int]) -> dict:
        row, epoch, position = sample
        entry = row[self.image_column]
        name = _entry_name(entry, position)
        try:
            image = self.decoder.decode_example(entry)
        except Exception as error:  # PIL raises many types for bad files
            raise ValueError(f"Cannot read training image {name}: {error}") from error
        rng = None if self.center_crop else random.Random(f"{self.seed}-{self.process_index}-{epoch}-{position}")
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
        """This process's position: epoch, examples consumed in it and, without a shuffle buffer, the stream's own
        ``IterableDataset.state_dict()``."""
        position = None
        if self.shuffle_buffer is None:  # before the first batch after a load, the loaded position is still pending
            position = self.stream.state_dict() if self._examples is not None else self._pending_position
        return {
            "epoch": self.epoch, "consumed": self.consumed, "dataset_state": position,
            "process_index": self.process_index, "num_processes": self.num_processes,
            "shuffle_buffer": self.shuffle_buffer,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("process_index", "num_processes", "shuffle_buffer"):
            if state[name] != getattr(self, name):
                raise ValueError(f"The stream position was saved with {name}={state[name]!r}, this run has {getattr(self, name)!r}.")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._examples, self._pending_position = None, state["dataset_state"]
        if state["dataset_state"] is not None:
            self.stream.load_state_dict(state["dataset_state"])

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
    ``KEY.png`` (the image, PNG-encoded unless it already holds PNG bytes) and ``KEY.cls`` (the label as decimal
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
