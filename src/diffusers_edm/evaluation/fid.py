"""Frechet distances between feature statistics of images: FID (Inception-v3) and FD_DINOv2, and the
``diffusers-edm-fid`` command line (``ref``: statistics of a data set; ``calc``: the distance of a folder of samples
to reference statistics), as EDM's ``fid.py`` and EDM2's ``calculate_metrics.py`` compute them.

The Frechet distance between Gaussians fitted to two sets of features (Heusel et al. 2017, Eq. 6; Dowson & Landau
1982) is ``||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``, with ``mu`` the mean and ``S`` the unbiased
covariance (normalised by N - 1) of the features. Statistics are saved as ``.npz`` with EDM's keys ``mu`` and
``sigma``, so EDM's published reference statistics load as they are.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import scipy.linalg
import torch
from accelerate.utils import gather_object
from PIL import Image
from tqdm.auto import tqdm

from ..image_modes import eight_bit_rgb
from ..value_checks import check_integer
from .feature_networks import DINOV2_NAME, FEATURES, INCEPTION_NAME, load_feature_network, process_state

if TYPE_CHECKING:
    import datasets

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FEATURE_NAMES = {"inception": INCEPTION_NAME, "dinov2": DINOV2_NAME}
METRIC_NAMES = {INCEPTION_NAME: "FID", DINOV2_NAME: "FD_DINOv2"}


# ------------------------------------------------------------------------------------------------ statistics
@dataclass
class FeatureStatistics:
    """Mean ``mu`` (D,) and unbiased covariance ``sigma`` (D, D), float64, of the features of ``num_images`` images
    computed by ``feature_network`` (:data:`~diffusers_edm.evaluation.feature_networks.INCEPTION_NAME` or
    :data:`~diffusers_edm.evaluation.feature_networks.DINOV2_NAME`). ``num_images`` is None for statistics saved
    without it (EDM's reference files)."""

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int | None
    feature_network: str
    feature_model: str = ""

    @property
    def feature_dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, features: np.ndarray, feature_network: str, feature_model: str = "") -> "FeatureStatistics":
        """``mu = mean_i f_i``, ``sigma = sum_i (f_i - mu)(f_i - mu)^T / (N - 1)`` of features ``(N, D)``, in float64.

        Fewer than 2 images is a ``ValueError``; N <= D images give a singular covariance (rank <= N - 1): a warning.
        """
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"statistics need the features (N, D) of at least 2 images, got shape {features.shape}.")
        if not np.isfinite(features).all():
            raise ValueError(f"the {feature_network} features hold {int((~np.isfinite(features)).sum())} non-finite value(s).")
        num_images, dim = features.shape
        if num_images <= dim:
            warnings.warn(
                f"{num_images} images for {dim}-dimensional {feature_network} features: the covariance has rank at most "
                f"{num_images - 1} < {dim} (singular), so the Frechet distance is computed but is a poor estimate; "
                f"use more images than feature dimensions (EDM: 50,000).",
                UserWarning,
                stacklevel=2,
            )
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), num_images, feature_network, feature_model)

    def save(self, path: str | os.PathLike) -> None:
        """An ``.npz`` with ``mu``, ``sigma`` (EDM's keys) and ``feature_network``, ``feature_dim``, ``num_images``,
        ``feature_model``; written under a temporary name and renamed, so an interrupted run leaves no partial file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:
            np.savez(
                file, mu=self.mu, sigma=self.sigma, feature_network=np.str_(self.feature_network),
                feature_dim=np.int64(self.feature_dim), num_images=np.int64(self.num_images or 0),
                feature_model=np.str_(self.feature_model),
            )
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStatistics":
        """Statistics saved by :meth:`save`, or an ``.npz`` with only ``mu`` and ``sigma`` (EDM's reference files,
        taken as Inception-v3 features, as EDM computes them)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"reference statistics {str(path)!r}: no such file (an .npz written by 'diffusers-edm-fid ref' or EDM's fid.py).")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"reference statistics {str(path)!r} is not a readable .npz file: {error}") from None
        if "mu" not in arrays or "sigma" not in arrays:
            raise ValueError(f"reference statistics {str(path)!r} hold the keys {sorted(arrays)}; 'mu' and 'sigma' are needed.")
        mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"reference statistics {str(path)!r}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D).")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError(f"reference statistics {str(path)!r} hold non-finite values.")
        network = str(arrays["feature_network"]) if "feature_network" in arrays else INCEPTION_NAME
        num_images = int(arrays["num_images"]) if "num_images" in arrays and int(arrays["num_images"]) > 0 else None
        model = str(arrays["feature_model"]) if "feature_model" in arrays else ""
        if "feature_dim" in arrays and int(arrays["feature_dim"]) != mu.shape[0]:
            raise ValueError(f"reference statistics {str(path)!r}: feature_dim {int(arrays['feature_dim'])} but mu has {mu.shape[0]} entries.")
        return cls(mu, sigma, num_images, network, model)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` (Heusel et al. 2017, Eq. 6), with
    ``scipy.linalg.sqrtm`` and the real part, as EDM's ``fid.py`` computes it."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    dim = mu1.shape[0] if mu1.ndim == 1 else -1
    if dim < 1 or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"the means must be (D,) and the covariances (D, D) for one D, got mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {sigma2.shape}."
        )
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    distance = float(np.real(np.square(mu1 - mu2).sum() + np.trace(sigma1 + sigma2 - 2.0 * root)))
    if not math.isfinite(distance):
        raise ValueError("the Frechet distance is not finite: the matrix square root of sigma1 @ sigma2 failed (non-finite covariances?).")
    return distance


def check_same_features(stats: FeatureStatistics, reference: FeatureStatistics, reference_name: str = "the reference") -> None:
    """A ``ValueError`` naming both feature networks and dimensions unless they agree."""
    if stats.feature_network != reference.feature_network or stats.feature_dim != reference.feature_dim:
        raise ValueError(
            f"{reference_name} statistics were computed with {reference.feature_network!r} features "
            f"({reference.feature_dim}-d), these images with {stats.feature_network!r} ({stats.feature_dim}-d): a "
            f"Frechet distance needs both from the same network; compute the reference with the same --features."
        )


# ------------------------------------------------------------------------------------------------ images
def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder``, recursively (EDM's numbered subfolders included), sorted by path."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class ImageSource(torch.utils.data.Dataset):
    """Images of a folder (a list of files) or of a ``datasets`` image column, each read as 8-bit RGB by its own bit
    depth (:func:`~diffusers_edm.image_modes.eight_bit_rgb`) and returned as a uint8 tensor (3, H, W)."""

    def __init__(self, files: Sequence[Path] | None = None, dataset: datasets.Dataset | None = None,
                 image_column: str | None = None, description: str = "") -> None:
        import datasets  # imported when used: `import diffusers_edm` stays light

        if (files is None) == (dataset is None):
            raise ValueError("an ImageSource needs either files or a dataset.")
        self.files = list(files) if files is not None else None
        self.description = description
        if dataset is not None:
            column = image_column or _default_image_column(dataset)
            if column not in dataset.column_names or not isinstance(dataset.features[column], datasets.Image):
                raise ValueError(f"--image_column {column!r} is not an image column of {description}; its columns: {dataset.features}.")
            # undecoded rows keep the file name for error messages; the decoder converts as datasets would
            self.decoder = datasets.Image(mode=dataset.features[column].mode)
            self.dataset = dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False))
            self.column = column
        else:
            self.dataset = None

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.dataset)

    def name(self, index: int, entry: dict | None = None) -> str:
        if self.files is not None:
            return str(self.files[index])
        entry = entry if entry is not None else self.dataset[index][self.column]
        return f"{self.description}[{index}]" + (f" ({entry['path']})" if entry.get("path") else "")

    def _open(self, index: int, entry: dict | None = None) -> Image.Image:
        if self.files is not None:
            return Image.open(self.files[index])
        return Image.open(io.BytesIO(entry["bytes"]) if entry.get("bytes") else entry["path"])

    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every image, read from the headers only."""
        if self.dataset is not None:  # in chunks: a large data set's undecoded column need not fit in memory
            entries = (entry for chunk in self.dataset.iter(batch_size=1024) for entry in chunk[self.column])
        else:
            entries = iter([None] * len(self))
        sizes = []
        for index, entry in enumerate(entries):
            try:
                with self._open(index, entry) as image:
                    sizes.append(image.size)
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot read the image {self.name(index, entry)}: {error}") from None
        return sizes

    def check_one_size(self) -> tuple[int, int]:
        """The common (width, height), or a ``ValueError`` naming two images of different sizes."""
        sizes = self.sizes()
        first = sizes[0]
        for index, size in enumerate(sizes):
            if size != first:
                raise ValueError(
                    f"{self.description} holds images of different sizes: {self.name(0)} is {first[0]}x{first[1]}, "
                    f"{self.name(index)} is {size[0]}x{size[1]}. Both feature networks resize every image, but a set "
                    f"of mixed sizes usually means a wrong folder (e.g. training images beside the samples): pass "
                    f"images of one size."
                )
        return first

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            if self.files is not None:
                with Image.open(self.files[index]) as image:
                    array = eight_bit_rgb(image)
            else:
                array = eight_bit_rgb(self.decoder.decode_example(self.dataset[index][self.column]))
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the image {self.name(index)}: {error}") from None
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _default_image_column(dataset: datasets.Dataset) -> str:
    import datasets

    image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    for name in ("image", "img"):
        if name in image_columns:
            return name
    if len(image_columns) == 1:
        return image_columns[0]
    raise ValueError(f"pass --image_column: the data set has {len(image_columns)} image columns {image_columns} ({dataset.features}).")


def open_images(data: str, split: str = "train", image_column: str | None = None) -> ImageSource:
    """A folder of images (searched recursively for .png, .jpg, .jpeg, .webp, .bmp), a data set saved with
    ``save_to_disk``, a folder ``datasets.load_dataset`` reads, or a Hub data set id (``split``, ``image_column``)."""
    import datasets

    path = Path(data).expanduser()
    if path.is_dir():
        files = image_files(path)
        if files:
            return ImageSource(files=files, description=f"the folder {data!r}")
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise ValueError(f"--split {split!r} is not in the data set {data!r}; its splits: {sorted(dataset)}.")
                dataset = dataset[split]
            return ImageSource(dataset=dataset, image_column=image_column, description=f"the data set {data!r}")
    elif path.exists():
        raise ValueError(f"--data / --images {data!r} is a file; pass a folder of images, a saved data set or a Hub data set id.")
    elif data.startswith((".", "/", "~")) or data.count("/") > 1:
        raise ValueError(f"--data / --images {data!r}: no such folder.")
    try:
        dataset = datasets.load_dataset(data, split=split)
    except Exception as error:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError...)
        where = "a folder without image files" if path.is_dir() else "not a folder here"
        raise ValueError(
            f"--data / --images {data!r} is {where}, and datasets.load_dataset cannot read it "
            f"(split {split!r}): {type(error).__name__}: {error}"
        ) from None
    return ImageSource(dataset=dataset, image_column=image_column, description=f"the data set {data!r}")


# ------------------------------------------------------------------------------------------------ features
def compute_statistics(
    source: ImageSource,
    network: torch.nn.Module,
    batch_size: int = 64,
    num_workers: int = 0,
    show_progress: bool = True,
) -> FeatureStatistics:
    """The feature statistics of every image of ``source``, split over the processes of Accelerate's
    ``PartialState``.

    The images are cut into batches of ``batch_size`` in order, and process ``r`` of ``W`` computes batches
    ``r, r + W, ...``; the features are gathered to every process and put back in image order, so each image meets
    the network in the same batch whatever the number of processes and the statistics equal a single process's.
    Features stay on the device until the end (one transfer). Every process returns the statistics, recorded as
    computed by ``network.name`` (any module mapping uint8 (N, 3, H, W) to (N, D) features may be passed).
    """
    check_integer("batch_size", batch_size, minimum=1)
    if len(source) < 2:
        raise ValueError(f"{source.description} holds {len(source)} image(s); statistics need at least 2.")
    source.check_one_size()
    state = process_state()
    batches = [list(range(start, min(start + batch_size, len(source)))) for start in range(0, len(source), batch_size)]
    mine = batches[state.process_index :: state.num_processes]
    network = network.to(state.device)
    features = []
    if mine:
        loader = torch.utils.data.DataLoader(source, batch_sampler=mine, num_workers=num_workers)
        for images in tqdm(loader, desc="features", unit="batch", disable=not (show_progress and state.is_main_process)):
            features.append(network(images.to(state.device)).to(torch.float32))
    local = torch.cat(features).cpu().numpy() if features else np.zeros((0, 0), dtype=np.float32)
    gathered = gather_object([(state.process_index, local)])
    by_rank = dict(gathered)
    ordered = []
    offsets = {rank: 0 for rank in by_rank}
    for index, batch in enumerate(batches):
        rank = index % state.num_processes
        ordered.append(by_rank[rank][offsets[rank] : offsets[rank] + len(batch)])
        offsets[rank] += len(batch)
    name = getattr(network, "name", type(network).__name__)
    return FeatureStatistics.from_features(np.concatenate(ordered), name, getattr(network, "source", ""))


# ------------------------------------------------------------------------------------------------ command line
def _integer_option(minimum: int):
    def parse(text: str) -> int:
        try:
            return check_integer("value", int(text), minimum=minimum)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}.") from None

    parse.__name__ = "integer"
    return parse


def _npz_path(text: str) -> str:
    if not text.lower().endswith(".npz"):
        raise argparse.ArgumentTypeError(f"must be a file name ending in .npz, got {text!r}.")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-edm-fid",
        description="FID (Inception-v3, as EDM) and FD_DINOv2 (as EDM2). Run under `accelerate launch` to split the "
        "feature extraction over processes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ref = commands.add_parser("ref", help="statistics (mean, covariance, number of images) of a data set's features")
    ref.add_argument("--data", required=True, help="a folder of images (recursive), a saved data set, or a Hub data set id")
    ref.add_argument("--dest", required=True, type=_npz_path, help="the .npz to write (keys mu, sigma, as EDM's reference files)")
    calc = commands.add_parser("calc", help="FID (or FD_DINOv2) of images against reference statistics")
    calc.add_argument("--images", required=True, help="a folder of images (recursive, e.g. EDM's numbered subfolders) or a data set")
    calc.add_argument("--ref", required=True, help="reference statistics (.npz from `ref`, or EDM's published ones)")
    calc.add_argument("--json", default=None, help="also write the result to this JSON file")
    for sub in (ref, calc):
        sub.add_argument("--features", choices=FEATURES, default="inception", help="inception: FID; dinov2: FD_DINOv2")
        sub.add_argument("--feature_model", default=None, help="a local network: the Inception TorchScript .pt file, or a saved Dinov2Model folder; default: download on first use")
        sub.add_argument("--batch", type=_integer_option(1), default=64, help="images per network call (per process)")
        sub.add_argument("--workers", type=_integer_option(0), default=2, help="data loading processes per process")
        sub.add_argument("--split", default="train", help="the split of a data set")
        sub.add_argument("--image_column", default=None, help="the image column of a data set (default: image, img or the only one)")
    return parser


def _statistics_of(data: str, args: argparse.Namespace) -> FeatureStatistics:
    source = open_images(data, split=args.split, image_column=args.image_column)
    network = load_feature_network(args.features, args.feature_model)
    return compute_statistics(source, network, batch_size=args.batch, num_workers=args.workers)


def main(argv: Sequence[str] | None = None) -> float | None:
    """Runs ``ref`` (returns None) or ``calc`` (returns the distance)."""
    args = build_parser().parse_args(argv)
    state = process_state()
    if args.command == "ref":
        stats = _statistics_of(args.data, args)
        if state.is_main_process:
            stats.save(args.dest)
            print(f"Saved the {stats.feature_network} statistics of {stats.num_images} images ({stats.feature_dim}-d) to {args.dest}")
        state.wait_for_everyone()
        return None
    reference = FeatureStatistics.load(args.ref)  # before the features: a wrong reference fails at once
    if reference.feature_network != FEATURE_NAMES[args.features]:
        raise ValueError(
            f"--ref {args.ref!r} holds {reference.feature_network!r} statistics ({reference.feature_dim}-d), but "
            f"--features {args.features} computes {FEATURE_NAMES[args.features]!r}: compute both with the same --features."
        )
    stats = _statistics_of(args.images, args)
    check_same_features(stats, reference, f"--ref {args.ref!r}")
    distance = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
    if state.is_main_process:
        metric = METRIC_NAMES[stats.feature_network]
        print(f"{metric}: {distance:.6g} ({stats.num_images} images; reference: {reference.num_images or 'unknown number of'} images)")
        if args.json:
            result = {
                "metric": metric, "value": distance, "num_images": stats.num_images, "images": args.images,
                "reference": args.ref, "reference_num_images": reference.num_images,
                "feature_network": stats.feature_network, "feature_dim": stats.feature_dim,
            }
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    state.wait_for_everyone()
    return distance


def cli() -> None:
    main()


if __name__ == "__main__":
    cli()
