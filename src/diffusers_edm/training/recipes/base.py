"""What a training recipe is: the parts of a run that depend on what is trained (model, loss, validation, export).

The training loop (:mod:`diffusers_edm.training.train`) is the same for every recipe: data, Accelerate, optimizer,
learning-rate ramp, EMA, checkpoints and logging. It asks its recipe, through :class:`Recipe`, for

- the model to train (:meth:`Recipe.build_model`), built from the arguments and the data's shape;
- what a batch conditions the model on (:meth:`Recipe.conditioning`: its class labels, or the text embeddings of its
  captions) and the batch loss (:meth:`Recipe.loss`), a scalar to back-propagate and device-tensor statistics for the
  logs;
- the states to checkpoint besides the model, optimizer, EMA and RNGs (:meth:`Recipe.states`);
- a validation artefact at every ``--validation_steps`` (:meth:`Recipe.validate`) and the export at the end
  (:meth:`Recipe.export`, :meth:`Recipe.write_model_card`), both with the EMA weights.
"""

from __future__ import annotations

import argparse
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL

from ...models.latent_codec import LatentCodec
from ..data import ImageDataset


@dataclass
class RecipeData:
    """What the loop learned about the data before any model exists.

    Args:
        num_classes: classes of the label column (0 without ``--label_column``).
        image_channels: channels of the training images (1 or 3).
        sample_size: height = width of what the model sees: ``--resolution``, or the latent size with ``--vae``.
        channels: channels of what the model sees: ``image_channels``, or the VAE's latent channels.
        vae: the frozen ``AutoencoderKL`` of latent training, or None.
        codec: its :class:`~diffusers_edm.models.LatentCodec`, or None.
        validation_dataset: the held-out images (``--validation_split``), or None.
        captions: with ``--caption_column``, the column's distinct captions in data-set order (the local tokenizer's
            vocabulary), else None.
        first_captions: with ``--caption_column``, each row's first caption, distinct, in data-set order (the
            default validation prompts are the first of them), else None.
    """

    num_classes: int
    image_channels: int
    sample_size: int
    channels: int
    vae: AutoencoderKL | None = None
    codec: LatentCodec | None = None
    validation_dataset: ImageDataset | None = None
    captions: list[str] | None = None
    first_captions: list[str] | None = None


@dataclass
class Export:
    """What :meth:`Recipe.export` wrote: named files (e.g. ``sample_grid``, ``accuracy``) and lines for the console."""

    artefacts: dict[str, Path] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def backbone_overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--backbone_config`` JSON file's keys (applied over the ``--model_size`` preset), or None."""
    return json.loads(Path(args.backbone_config).read_text()) if args.backbone_config else None


def reduce_loss(per_example_mean: torch.Tensor, elements_per_example: int, reduction: str) -> torch.Tensor:
    """The batch loss from each example's loss averaged over its elements (pixels or latents).

    ``"mean"``: the mean over the batch, i.e. over every element (Improved DDPM's ``mean_flat(...).mean()``).
    ``"sum"``: ``elements_per_example`` times that, i.e. each example's loss summed over its elements and averaged
    over the batch (EDM's ``loss.sum() / batch``); its gradient is ``elements_per_example`` times the mean's.
    """
    batch_mean = per_example_mean.mean()
    return batch_mean * elements_per_example if reduction == "sum" else batch_mean


class Recipe(ABC):
    """One kind of training run. Subclasses live one per file in this package; ``select_recipe`` picks one."""

    #: The command-line flags that select this recipe, for messages.
    selected_by: str = ""
    #: Arguments that only this recipe reads; the others refuse them when given (they would be silently ignored).
    own_arguments: tuple[str, ...] = ()
    #: ``(P_mean, P_std)`` of ``ln sigma`` when ``--P_mean`` / ``--P_std`` are not given (EDM's, Karras et al. 2022);
    #: ``None`` leaves it to the recipe.
    ln_sigma_distribution: tuple[float | None, float] = (-1.2, 1.2)

    #: The training images, set by the loop after :meth:`build_model` and before :meth:`prepare`.
    train_dataset: ImageDataset | None = None

    def __init__(self, args: argparse.Namespace, data: RecipeData, accelerator: Accelerator):
        self.args, self.data, self.accelerator = args, data, accelerator

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        """Fill this recipe's defaults into ``args`` and refuse settings it cannot honour (``ValueError``)."""

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The freshly initialised model to train (the module that is checkpointed and whose EMA is exported)."""

    def trainable_parameters(self, model: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
        """The parameters the optimizer updates (every parameter by default)."""
        return model.parameters()

    def optimizer_class(self) -> type[torch.optim.Optimizer]:
        """The optimizer (AdamW by default), built by the loop with the run's learning rate, betas and decay."""
        return torch.optim.AdamW

    def latents(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        """The model latents of a batch's images in latent training (``data.codec``): a VAE posterior sample."""
        return self.data.codec.encode(images)

    def prepare(self, model: torch.nn.Module) -> None:
        """Called once after ``accelerator.prepare``, with the wrapped model the loop trains (nothing by default)."""

    def states(self) -> dict[str, Any]:
        """Objects with ``state_dict`` / ``load_state_dict`` to checkpoint besides the loop's own (none by default)."""
        return {}

    def conditioning(self, batch: dict) -> Any:
        """What ``batch`` conditions the model on, handed to :meth:`loss` as its third argument: the class labels
        (``None`` without ``--label_column``) by default; the text recipe's model inputs from the captions."""
        return batch.get("labels")

    @abstractmethod
    def loss(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """The batch loss (a scalar tensor) and statistics as device tensors, given :meth:`conditioning`'s value;
        nothing here may wait for the device."""

    @abstractmethod
    def validate(self, model: torch.nn.Module, step: int, output_dir: Path) -> None:
        """The validation artefact of ``model`` (EMA weights, eval mode) at ``step``; called on every process."""

    @abstractmethod
    def export(self, model: torch.nn.Module, output_dir: Path, step: int) -> Export:
        """Save the trained ``model`` (EMA weights, eval mode, after ``step`` optimizer steps) to ``output_dir``;
        called on every process."""

    @abstractmethod
    def write_model_card(self, output_dir: Path, exported: Export, steps: int) -> Path:
        """Write ``output_dir/README.md`` for what :meth:`export` saved (main process only)."""
