"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", section 4.1-4.2,
Algorithms 1 and 2).

A classifier ``p(y | x; sigma)`` trained on noisy samples (a :class:`~diffusers_edm.NoiseConditionalClassifier`)
steers sampling towards class ``y`` by the gradient of its log-probability, scaled by ``s`` (ADM's default: 1.0):

- sigma space (EDM's denoiser, every sampler): Algorithm 2 shifts the noise prediction,
  ``eps_hat = eps - sqrt(1 - alpha_bar) grad_{x_t} log p``. Written for ``x = x_t / sqrt(alpha_bar)`` and
  ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` this is ``eps_hat = eps - sigma grad_x log p``, so
  ``D = x - sigma eps`` becomes::

      D_guided(x; sigma) = D(x; sigma) + s sigma^2 grad_x log p(y | x; sigma)

  (the score ``(D - x) / sigma^2`` plus ``s grad_x log p``), applied at every model call of any sampler.
- DDPM form (ancestral sampling, Algorithm 1): ``x_{t-1} ~ N(mu + s Sigma grad_{x_t} log p(y | x_t, t), Sigma)`` with
  the model's (learned) variance ``Sigma``. The sigma-space classifier reads ``x_t`` as ``x = x_t / sqrt(alpha_bar_t)``
  at ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``; by the chain rule
  ``grad_{x_t} log p = grad_x log p / sqrt(alpha_bar_t)``, which autograd applies through the input scaling.

The gradient is taken in float32 under ``torch.enable_grad()`` (pipelines sample under ``no_grad``), with one backward
pass for the whole batch: samples are independent, so the gradient of ``sum_i log p(y_i | x_i)`` with respect to
``x_i`` is that of sample i's own term.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from diffusers import ModelMixin

from ..models.preconditioned_denoisers import label_tensor
from ..value_checks import check_real

#: ADM's classifier scale for ImageNet 256 (FID 4.59) and 128 (2.97): the default when a pipeline has a classifier.
DEFAULT_CLASSIFIER_SCALE = 1.0


#: The largest classifier scale accepted. ADM's scales are 0.5-10; at the top of EDM's range (sigma = 80) the term
#: ``s sigma^2 grad log p`` is already ``6.4e6 s`` times the gradient, and far larger scales overflow float32 samples.
MAX_CLASSIFIER_SCALE = 1000.0


def check_classifier_scale(classifier_scale: object, has_classifier: bool) -> float:
    """The classifier scale ``s`` of a call: ``None`` is :data:`DEFAULT_CLASSIFIER_SCALE` with a classifier and 0
    without one. ``ValueError`` unless it is a number in ``[0, MAX_CLASSIFIER_SCALE]``, and for ``s > 0`` without a classifier."""
    if classifier_scale is None:
        return DEFAULT_CLASSIFIER_SCALE if has_classifier else 0.0
    scale = check_real(
        "classifier_scale", classifier_scale, minimum=0.0, maximum=MAX_CLASSIFIER_SCALE,
        allowed=f"None or a number in [0, {MAX_CLASSIFIER_SCALE:g}] (0: no classifier guidance; ADM's default is 1.0)",
    )
    if scale > 0 and not has_classifier:
        raise ValueError(
            f"classifier_scale={classifier_scale!r} needs a classifier: this pipeline has none (load one with "
            "`from_pretrained(..., classifier=NoiseConditionalClassifier.from_pretrained(...))`); use 0 or None."
        )
    return scale


def classifier_sample_size(classifier: ModelMixin) -> tuple[int, int]:
    """``(height, width)`` of the inputs the classifier was configured for (its config's ``sample_size``)."""
    size = classifier.config.sample_size
    return (int(size), int(size)) if isinstance(size, numbers.Integral) else tuple(int(s) for s in size)


def check_classifier(
    classifier: ModelMixin, *, num_classes: int, sample_size: tuple[int, int], channels: int, model: str
) -> None:
    """``ValueError`` naming both sides unless ``classifier`` reads the samples of ``model`` (its ``in_channels`` and
    ``sample_size``) and, for a class-conditional model (``num_classes > 0``), has the same classes."""
    config = classifier.config
    for key in ("num_classes", "sample_size", "in_channels"):
        if not hasattr(config, key):
            raise TypeError(
                f"classifier must be a NoiseConditionalClassifier (a config with num_classes, sample_size and "
                f"in_channels), got {type(classifier).__name__} without {key}."
            )
    pairs = {
        "in_channels": (int(config.in_channels), int(channels)),
        "sample_size": (classifier_sample_size(classifier), tuple(sample_size)),
    }
    if num_classes > 0:
        pairs["num_classes"] = (int(config.num_classes), int(num_classes))
    for name, (theirs, ours) in pairs.items():
        if theirs != ours:
            raise ValueError(
                f"The classifier does not fit the {model}: the classifier has {name}={theirs!r} but the {model} has "
                f"{name}={ours!r}."
            )


def check_classifier_labels(
    classifier: ModelMixin, class_labels: Any, batch_size: int, device: torch.device | str
) -> torch.LongTensor:
    """``batch_size`` label ids for classifier guidance on ``device``; ``ValueError`` unless every id is a class of
    the classifier (``0..num_classes - 1``). Looks at the values once (a host synchronisation): once per call."""
    num_classes = int(classifier.config.num_classes)
    if class_labels is None:
        raise ValueError(
            "Classifier guidance steers towards given classes: pass class_labels (ids in "
            f"0..{num_classes - 1}), or classifier_scale=0."
        )
    labels = label_tensor(class_labels).reshape(-1).long()
    if labels.numel() == 1:
        labels = labels.expand(batch_size)
    elif labels.numel() != batch_size:
        raise ValueError(f"Got {labels.numel()} class_labels for batch_size={batch_size}; give one label or one per sample.")
    valid = (labels >= 0) & (labels < num_classes)
    if not bool(valid.all()):
        raise ValueError(
            f"class_labels must be classes of the classifier, 0..{num_classes - 1}, for classifier guidance; got "
            f"{labels[~valid].tolist()}."
        )
    return labels.to(device)


def per_sample(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """``sigma`` broadcastable against ``like`` (a Python float, a 0-d tensor, or ``(B,)`` as ``(B, 1, ..., 1)``)."""
    if isinstance(sigma, numbers.Real):
        return float(sigma)
    sigma = sigma.to(like.dtype)
    return sigma.reshape(-1, *([1] * (like.ndim - 1))) if sigma.ndim == 1 else sigma


class ClassifierGuidance:
    """The classifier guidance term (see the module docstring).

    Args:
        classifier: a noise-conditional classifier, ``classifier(x, sigma).logits`` of shape ``(B, num_classes)``
            for the noisy sample ``x = y + sigma n`` in the denoiser's data space.
        class_labels: the ``B`` target classes ``y`` (validated by :func:`check_classifier_labels`).
        scale: the classifier scale ``s > 0``.
    """

    def __init__(self, classifier: ModelMixin, class_labels: torch.Tensor, scale: float):
        self.classifier = classifier
        self.class_labels = class_labels.reshape(-1, 1)
        self.scale = float(scale)

    def log_prob_gradient(
        self, x: torch.Tensor, sigma: torch.Tensor | float, input_scale: float = 1.0
    ) -> torch.Tensor:
        """``grad_x sum_i log p(y_i | input_scale x_i; sigma)`` in float32 (``input_scale``: the DDPM form's
        ``1 / sqrt(alpha_bar_t)``, so the gradient is with respect to ``x_t``)."""
        with torch.enable_grad():
            x = x.detach().to(torch.float32).requires_grad_(True)
            model_input = x if input_scale == 1.0 else x * input_scale
            logits = self.classifier(model_input, sigma).logits.to(torch.float32)
            log_prob = torch.log_softmax(logits, dim=-1).gather(1, self.class_labels).sum()
            (gradient,) = torch.autograd.grad(log_prob, x)
        return gradient

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The change of ``D`` in sigma space: ``s sigma^2 grad_x log p(y | x; sigma)``."""
        return (self.scale * per_sample(sigma, x) ** 2) * self.log_prob_gradient(x, sigma)

    def mean_shift(self, x_t: torch.Tensor, sigma_t: float, variance: torch.Tensor) -> torch.Tensor:
        """The change of the DDPM reverse mean: ``s Sigma grad_{x_t} log p(y | x_t, t)``, the classifier evaluated at
        ``x_t / sqrt(alpha_bar_t) = x_t sqrt(1 + sigma_t^2)`` and ``sigma_t`` (host float)."""
        input_scale = (1.0 + sigma_t**2) ** 0.5
        return self.scale * variance * self.log_prob_gradient(x_t, sigma_t, input_scale)
