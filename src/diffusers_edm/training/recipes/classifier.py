"""The classifier recipe (``--task classifier``): a :class:`~diffusers_edm.models.NoiseConditionalClassifier` for
classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", section 4.1: a
classifier trained on noisy images, whose gradient steers sampling).

Loss: the cross-entropy of ``classifier(y + sigma n, sigma)`` against the label ``c`` of the clean image ``y``,
``-log softmax(logits)[c]``, averaged over the batch, with ``n ~ N(0, I)`` and one noise level per image drawn as
in EDM's training (Karras et al. 2022, section 5): ``ln sigma ~ N(P_mean, P_std^2)`` (``--P_mean``, ``--P_std``;
EDM's -1.2, 1.2 by default), clamped to ``[--classifier_sigma_min, --classifier_sigma_max]`` (0.002, 80). The draws
come from the global torch RNG on the batch's device, sigma first, then n, so a resumed run repeats them exactly.

Biasing towards low noise: a classifier's gradient is informative where the image is still recognisable; at large
sigma every class is nearly equally likely and the classifier has little to learn. Lower ``--P_mean`` (e.g. -2.0)
to spend more of the training on low noise, and lower ``--classifier_sigma_max`` (e.g. 5) to clamp the rare large
draws to that level (clamping keeps one draw per image, so no rejection loop waits for the device). The clamped
range is recorded in the classifier's config (``sigma_min``, ``sigma_max``) as the range it was trained on.

Validation (every ``--validation_steps`` and at the end, with the EMA weights): the accuracy on the held-out split
(``--validation_split``, stratified by class, the same images for the same ``--seed``) in fixed noise-level buckets
(``--validation_sigma_edges``): each held-out image is noised ``--validation_noise_draws`` times per bucket, sigma
log-uniform within the bucket, from generators seeded by ``--seed`` and the batch number (the same draws at every
validation and for any number of processes). Counts are summed over all processes. The result is logged to the
tracker (``accuracy/sigma_<lo>-<hi>``, ``accuracy/all``), printed, and written as JSON
(``accuracy/step-N.json``; ``accuracy.json`` for the exported model).

Export: the EMA classifier with ``save_pretrained`` into ``--output_dir`` itself, so
``NoiseConditionalClassifier.from_pretrained(output_dir)`` loads it, and a model card (README.md) with the accuracy
table and a usage example.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...losses import EDMLoss
from ..model_card import write_classifier_model_card
from ..model_presets import make_classifier
from .base import Export, Recipe, backbone_overrides

logger = logging.getLogger(__name__)

DEFAULT_VALIDATION_SPLIT = 0.1
DEFAULT_SIGMA_RANGE = (0.002, 80.0)
DEFAULT_SIGMA_EDGES = (0.002, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 80.0)
DEFAULT_NOISE_DRAWS = 4
POOLINGS = ("attention", "mean")


@dataclass
class ClassifierLossOutput:
    """``loss``: per-example cross-entropy (float32, ``(B,)``); ``sigma``, ``noise``: the draws; ``logits``: ``(B, K)``."""

    loss: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    logits: torch.Tensor


def classifier_loss(
    classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, sigma: torch.Tensor
) -> ClassifierLossOutput:
    """``-log softmax(classifier(y + sigma n, sigma))[c]`` per example, ``n = torch.randn_like(images)``."""
    noise = torch.randn_like(images, memory_format=torch.contiguous_format)  # the same draws for NHWC batches
    logits = classifier(images + sigma.reshape(-1, *([1] * (images.ndim - 1))) * noise, sigma).logits
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    return ClassifierLossOutput(loss=loss, sigma=sigma, noise=noise, logits=logits)


def _check_positive_increasing(name: str, values: list[float], minimum_length: int) -> None:
    if (
        len(values) < minimum_length
        or not all(math.isfinite(v) and v > 0 for v in values)
        or any(b <= a for a, b in zip(values, values[1:]))
    ):
        raise ValueError(
            f"--{name} must be at least {minimum_length} finite noise levels > 0 in increasing order, got {values}."
        )


class ClassifierRecipe(Recipe):
    """``--task classifier``: see the module docstring for the loss, the noise levels, validation and export."""

    selected_by = "--task classifier"

    own_arguments = (
        "validation_split", "classifier_sigma_min", "classifier_sigma_max", "classifier_pooling",
        "validation_sigma_edges", "validation_noise_draws",
    )

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        if args.label_column is None:
            raise ValueError("--task classifier learns the classes of --label_column; pass it (e.g. --label_column label).")
        refused = {
            "--loss hybrid": args.loss == "hybrid",
            f"--precond {args.precond}": args.precond is not None,
            f"--backbone {args.backbone}": args.backbone != "unet",
            f"--label_dropout {args.label_dropout}": args.label_dropout != 0,
            f"--loss_reduction {args.loss_reduction}": args.loss_reduction not in (None, "mean"),
        }
        for flag, given in refused.items():
            if given:
                raise ValueError(
                    f"{flag} does not apply to --task classifier (a UNet-encoder classifier with EDM's c_in and c_noise, "
                    "cross-entropy averaged over the batch, real labels only); drop it."
                )
        args.loss_reduction = "mean"
        if args.validation_split is None:
            args.validation_split = DEFAULT_VALIDATION_SPLIT
        if not 0.0 < args.validation_split < 1.0:
            raise ValueError(f"--validation_split must lie in (0, 1) (the held-out fraction), got {args.validation_split}.")
        args.classifier_sigma_min = DEFAULT_SIGMA_RANGE[0] if args.classifier_sigma_min is None else args.classifier_sigma_min
        args.classifier_sigma_max = DEFAULT_SIGMA_RANGE[1] if args.classifier_sigma_max is None else args.classifier_sigma_max
        if not (0 < args.classifier_sigma_min < args.classifier_sigma_max < math.inf):
            raise ValueError(
                "--classifier_sigma_min and --classifier_sigma_max must satisfy 0 < min < max < inf, got "
                f"{args.classifier_sigma_min} and {args.classifier_sigma_max}."
            )
        if not args.P_std > 0 or not math.isfinite(args.P_mean):
            raise ValueError(f"--P_std must be > 0 and --P_mean finite, got P_mean={args.P_mean}, P_std={args.P_std}.")
        args.classifier_pooling = args.classifier_pooling or "attention"
        args.validation_sigma_edges = list(args.validation_sigma_edges or DEFAULT_SIGMA_EDGES)
        _check_positive_increasing("validation_sigma_edges", args.validation_sigma_edges, 2)
        args.validation_noise_draws = DEFAULT_NOISE_DRAWS if args.validation_noise_draws is None else args.validation_noise_draws
        if args.validation_noise_draws < 1:
            raise ValueError(f"--validation_noise_draws must be >= 1, got {args.validation_noise_draws}.")

    # ---------------------------------------------------------------------------------------------- model, loss
    def build_model(self) -> torch.nn.Module:
        args, data = self.args, self.data
        self.sigma_distribution = EDMLoss(P_mean=args.P_mean, P_std=args.P_std, sigma_data=args.sigma_data)
        return make_classifier(
            args.model_size, data.sample_size, data.channels, data.num_classes, backbone_overrides(args),
            pooling=args.classifier_pooling, sigma_data=args.sigma_data,
            sigma_min=args.classifier_sigma_min, sigma_max=args.classifier_sigma_max,
        )

    def sample_sigma(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """EDM's ``ln sigma ~ N(P_mean, P_std^2)``, clamped to ``[--classifier_sigma_min, --classifier_sigma_max]``."""
        sigma = self.sigma_distribution.sample_sigma(batch_size, device)
        return sigma.clamp(self.args.classifier_sigma_min, self.args.classifier_sigma_max)

    def loss(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        sigma = self.sample_sigma(images.shape[0], images.device)
        output = classifier_loss(model, images, labels, sigma)
        log_sigma = sigma.log()
        accuracy = (output.logits.argmax(dim=-1) == labels).float().mean()
        return output.loss.mean(), {
            "log_sigma_mean": log_sigma.mean().detach(), "log_sigma_std": log_sigma.std().detach(),
            "train_accuracy": accuracy.detach(),
        }

    # ---------------------------------------------------------------------------------------------- accuracy
    @torch.no_grad()
    def bucket_accuracy(self, model: torch.nn.Module) -> dict[str, Any]:
        """Accuracy of ``model`` on the held-out images per noise-level bucket, summed over every process.

        Returns ``{"num_images", "noise_draws", "accuracy" (all buckets), "buckets": [{"sigma_min", "sigma_max",
        "accuracy", "count"}]}``; every process must call it.
        """
        args, accelerator, dataset = self.args, self.accelerator, self.data.validation_dataset
        device = accelerator.device
        edges = torch.tensor(args.validation_sigma_edges, dtype=torch.float64).log().to(device=device, dtype=torch.float32)
        log_low, log_width = edges[:-1], edges[1:] - edges[:-1]
        buckets = len(args.validation_sigma_edges) - 1
        batch_size = args.train_batch_size
        batches = [list(range(start, min(start + batch_size, len(dataset)))) for start in range(0, len(dataset), batch_size)]
        # Batch k goes to process k mod P and is noised from a generator seeded by k: the same draws for any P.
        numbers = range(accelerator.process_index, len(batches), accelerator.num_processes)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=[batches[k] for k in numbers], num_workers=args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(args.seed),  # its own: never a draw from the training RNG
        )
        correct = torch.zeros(buckets, device=device)
        total = torch.zeros(buckets, device=device)
        for number, batch in zip(numbers, loader):
            generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + number)
            images, labels = batch["images"].to(device), batch["labels"].to(device)
            if self.data.codec is not None:
                images = self.data.codec.encode(images, generator=generator)
            count = images.shape[0]
            for _ in range(args.validation_noise_draws):
                # All buckets in one call: row b of sigma is log-uniform in bucket b.
                u = torch.rand(buckets, count, generator=generator, device=device)
                sigma = (log_low[:, None] + log_width[:, None] * u).exp()
                noise = torch.randn((buckets, *images.shape), generator=generator, device=device)
                noisy = images[None] + sigma.reshape(buckets, count, *([1] * (images.ndim - 1))) * noise
                logits = model(noisy.flatten(0, 1), sigma.flatten()).logits
                correct += (logits.argmax(dim=-1).reshape(buckets, count) == labels[None]).sum(dim=1)
                total += count
        correct, total = accelerator.reduce(correct, "sum"), accelerator.reduce(total, "sum")
        correct_counts, total_counts = correct.tolist(), total.tolist()
        low_edges, high_edges = args.validation_sigma_edges[:-1], args.validation_sigma_edges[1:]
        return {
            "num_images": len(dataset),
            "noise_draws": args.validation_noise_draws,
            "accuracy": sum(correct_counts) / max(sum(total_counts), 1),
            "buckets": [
                {"sigma_min": low, "sigma_max": high, "accuracy": hits / max(count, 1), "count": int(count)}
                for low, high, hits, count in zip(low_edges, high_edges, correct_counts, total_counts)
            ],
        }

    def _report(self, metrics: dict[str, Any], step: int, path: Path) -> None:
        """Log to the trackers (every process: Accelerate logs on the main one), print and write JSON (main)."""
        logs = {f"accuracy/sigma_{b['sigma_min']:g}-{b['sigma_max']:g}": b["accuracy"] for b in metrics["buckets"]}
        logs["accuracy/all"] = metrics["accuracy"]
        self.accelerator.log(logs, step=step)
        if not self.accelerator.is_main_process:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"step": step, **metrics}, indent=2))
        rows = "  ".join(f"[{b['sigma_min']:g}, {b['sigma_max']:g}): {b['accuracy']:.3f}" for b in metrics["buckets"])
        print(f"step {step}: held-out accuracy {metrics['accuracy']:.3f} by sigma  {rows}")

    def validate(self, model: torch.nn.Module, step: int, output_dir: Path) -> None:
        self._report(self.bucket_accuracy(model), step, output_dir / "accuracy" / f"step-{step:07d}.json")

    def export(self, model: torch.nn.Module, output_dir: Path, step: int) -> Export:
        metrics = self.bucket_accuracy(model)
        path = output_dir / "accuracy.json"
        self._report(metrics, step, path)
        if not self.accelerator.is_main_process:
            return Export(metrics=metrics)
        model.save_pretrained(output_dir)
        return Export(
            artefacts={"accuracy": path},
            summary=[f"Classifier: {output_dir}", f"Held-out accuracy by noise level: {path}"],
            metrics=metrics,
        )

    def write_model_card(self, output_dir: Path, exported: Export, steps: int) -> Path:
        return write_classifier_model_card(self.args, output_dir, exported.metrics, steps)
