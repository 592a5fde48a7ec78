"""Tiny models for the guidance tests, and the independent statements the tests compare against.

- :func:`tiny_classifier`: a NoiseConditionalClassifier over 8x8 samples (pixels or 4-channel latents).
- :func:`finite_difference_gradient`: ``grad_x sum_i log p(y_i | input_scale x_i; sigma)`` by central differences in
  float64 (a float64 copy of the classifier, every coordinate perturbed in one batch), no autograd.
"""

from __future__ import annotations

import copy

import torch

from diffusers_edm.models import EDMPrecond, NoiseConditionalClassifier
from tiny_backbones import tiny_unet

NUM_CLASSES = 5  # the conditional denoiser's classes; its null label is 5


def tiny_classifier(num_classes: int = NUM_CLASSES, in_channels: int = 3, sample_size: int = 8, seed: int = 0,
                    pooling: str = "attention") -> NoiseConditionalClassifier:
    torch.manual_seed(seed)
    return NoiseConditionalClassifier(
        sample_size=sample_size, in_channels=in_channels, num_classes=num_classes,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        attention_head_dim=4, norm_num_groups=4, pooling=pooling,
    ).eval()


def conditional_denoiser(seed: int = 0, **config) -> EDMPrecond:
    """5 classes and the null label 5."""
    return EDMPrecond.from_backbone(
        tiny_unet(num_class_embeds=NUM_CLASSES + 1, seed=seed), num_classes=NUM_CLASSES, null_class_label=NUM_CLASSES, **config
    ).eval()


def unconditional_denoiser(seed: int = 0, **config) -> EDMPrecond:
    return EDMPrecond.from_backbone(tiny_unet(seed=seed), **config).eval()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def finite_difference_gradient(
    classifier: NoiseConditionalClassifier, x: torch.Tensor, sigma: float, labels: list[int], input_scale: float = 1.0,
    step: float = 1e-4,
) -> torch.Tensor:
    """``d/dx_i log softmax(classifier(input_scale x_i; sigma))[y_i]`` for every coordinate of every sample, by
    ``(f(x + h e_j) - f(x - h e_j)) / 2h`` on a float64 copy of the classifier."""
    exact = copy.deepcopy(classifier).double()
    gradients = []
    for sample, label in zip(x.double(), labels):
        count = sample.numel()
        offsets = torch.eye(count, dtype=torch.float64).reshape(count, *sample.shape) * step
        batch = torch.cat([sample + offsets, sample - offsets]) * input_scale
        with torch.no_grad():
            logits = exact(batch, torch.tensor(sigma, dtype=torch.float64)).logits.double()
        log_prob = torch.log_softmax(logits, dim=-1)[:, label]
        gradients.append(((log_prob[:count] - log_prob[count:]) / (2 * step)).reshape(sample.shape))
    return torch.stack(gradients)
