"""A small CNN digit classifier whose penultimate layer is the feature space of the quality benchmark's Frechet distance.

This is FID's construction at the scale of 16x16 digits: Inception features are meaningless here, so the benchmark
trains its own classifier on the real training digits and measures

- the Frechet distance between Gaussians fitted to the classifier's 64-d features of the samples and of the
  held-out real digits (:func:`benchmarks.distribution_distances.moment_frechet_distance`, float64);
- the classifier's accuracy on class-conditional samples (does a sample of "3" look like a 3?).

Both depend on the classifier and the sample count, so they compare recipes within one run only; the benchmark
also reports the same distance for real training digits (the floor at that sample count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.digits_split import NUM_CLASSES, DigitsSplit, load_digits_split
from benchmarks.distribution_distances import moment_frechet_distance

FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """Two conv + pool stages, a 64-d feature layer, a linear head; for ``resolution``-square 1-channel images in [-1, 1]."""

    def __init__(self, resolution: int, num_classes: int = 10):
        super().__init__()
        if resolution % 4 != 0:
            raise ValueError(f"DigitClassifier pools twice: the resolution must be divisible by 4, got {resolution}.")
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (resolution // 4) ** 2, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The 64-d penultimate activations, ``(N, 64)``."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, resolution: int, epochs: int, device: torch.device, seed: int = 0
) -> DigitClassifier:
    """Adam (lr 1e-3), batch 64, ``epochs`` passes over ``images``, with light noise augmentation.

    The augmentation (Gaussian pixel noise, std up to 0.1) keeps the features from keying on pixel-perfect
    texture that no generative model reproduces exactly, so the distance measures the shapes of the digits.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(resolution).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = images.to(device), labels.to(device)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).to(device)
        for start in range(0, len(images), 64):
            index = order[start : start + 64]
            batch = images[index]
            noise_std = torch.rand(len(index), 1, 1, 1, generator=generator).to(device) * 0.1
            batch = batch + noise_std * torch.randn(batch.shape, generator=generator).to(device)
            loss = nn.functional.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def features_and_predictions(model: DigitClassifier, images: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, 64)`` (float64, CPU) and predicted labels ``(N,)`` of images in [-1, 1]."""
    device = next(model.parameters()).device
    features, predictions = [], []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch].to(device, torch.float32)
        feature = model.features(chunk)
        features.append(feature.double().cpu())
        predictions.append(model.head(feature).argmax(1).cpu())
    return torch.cat(features), torch.cat(predictions)


class FeatureFrechet:
    """Frechet distance in the classifier's feature space to a fixed reference set (the held-out real digits)."""

    def __init__(self, model: DigitClassifier, reference_images: torch.Tensor):
        self.model = model
        reference, _ = features_and_predictions(model, reference_images)
        self.mean = reference.mean(0)
        self.covariance = torch.cov(reference.T)
        self.reference_count = len(reference)

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """``frechet`` to the reference and, given the requested ``labels``, the classifier's ``accuracy`` on ``images``."""
        features, predictions = features_and_predictions(self.model, images)
        result = {"frechet": moment_frechet_distance(features, self.mean, self.covariance)}
        if labels is not None:
            result["accuracy"] = float((predictions == labels.cpu()).float().mean())
        return result


@dataclass
class DigitScorer:
    """What every digits benchmark scores with: the data split, the feature classifier trained on its training part,
    that classifier's held-out accuracy, and the Frechet distance to the held-out digits in its features."""

    split: DigitsSplit
    classifier: DigitClassifier
    heldout_accuracy: float
    frechet: FeatureFrechet

    def real_in_label_order(self, count: int) -> torch.Tensor:
        """Indices of ``count`` real training digits whose labels cycle 0, 1, ..., 9 like the samples' labels."""
        labels = self.split.train_labels
        per_class = [torch.nonzero(labels == c).flatten() for c in range(NUM_CLASSES)]
        return torch.stack([per_class[i % NUM_CLASSES][i // NUM_CLASSES] for i in range(count)])


def fit_digit_scorer(resolution: int, epochs: int, device: torch.device) -> DigitScorer:
    """Load the digits split at ``resolution``, train the feature classifier for ``epochs`` and measure it."""
    split = load_digits_split(resolution)
    classifier = train_classifier(split.train_images, split.train_labels, resolution, epochs, device)
    _, predictions = features_and_predictions(classifier, split.heldout_images)
    accuracy = float((predictions == split.heldout_labels).float().mean())
    return DigitScorer(split, classifier, accuracy, FeatureFrechet(classifier, split.heldout_images))
