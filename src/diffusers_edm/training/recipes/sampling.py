"""What the diffusion recipes share: the model is exported as a pipeline, validated by a sample grid."""

from __future__ import annotations

import math
from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from ..image_grid import image_grid
from ..model_card import write_model_card
from .base import Export, Recipe


class SamplingRecipe(Recipe):
    """A recipe whose model samples through a pipeline: validation writes ``samples/step-N.png`` (and logs it to
    TensorBoard), the export is the pipeline folder (``save_pretrained``), ``samples.png`` and the pipeline's card."""

    @abstractmethod
    def pipeline(self, model: torch.nn.Module) -> DiffusionPipeline:
        """The pipeline that samples from ``model`` (and is saved by the export)."""

    @abstractmethod
    def sample_steps(self) -> int:
        """Sampling steps of the validation and final grids."""

    def sample_grid(self, model: torch.nn.Module, count: int) -> Image.Image:
        """Samples with a fixed generator (never the training RNG, so sampling does not change the run)."""
        pipeline = self.pipeline(model)
        pipeline.set_progress_bar_config(disable=True)
        num_classes = self.data.num_classes
        kwargs = dict(generator=torch.Generator(device="cpu").manual_seed(self.args.seed), output_type="np")
        if num_classes > 0:
            kwargs.update(class_labels=[i % num_classes for i in range(count)], guidance_scale=self.args.guidance_scale)
        images = pipeline(batch_size=count, num_inference_steps=self.sample_steps(), **kwargs).images
        # labels cycle through the classes, so K columns make one column per class
        columns = num_classes if 0 < num_classes <= count else math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        return image_grid(images, rows=rows)

    def validate(self, model: torch.nn.Module, step: int, output_dir: Path) -> None:
        accelerator = self.accelerator
        if not accelerator.is_main_process:
            return
        grid = self.sample_grid(model, self.args.num_validation_images)
        path = output_dir / "samples" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"samples": np.asarray(grid)[None, ..., None] if grid.mode == "L" else np.asarray(grid)[None]},
                                   step=step, dataformats="NHWC")

    def export(self, model: torch.nn.Module, output_dir: Path, step: int) -> Export:
        """The pipeline (``save_pretrained``) and ``samples.png``, on the main process."""
        if not self.accelerator.is_main_process:
            return Export()
        self.pipeline(model).save_pretrained(output_dir)
        grid_path = output_dir / "samples.png"
        self.sample_grid(model, max(self.args.num_validation_images, 1)).save(grid_path)
        return Export(artefacts={"sample_grid": grid_path}, summary=[f"Pipeline: {output_dir}", f"Sample grid: {grid_path}"])

    def write_model_card(self, output_dir: Path, exported: Export, steps: int) -> Path:
        return write_model_card(self.args, output_dir, exported.artefacts.get("sample_grid"), steps)
