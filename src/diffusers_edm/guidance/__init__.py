"""Guidance: a guided denoiser built from terms, each in its own file.

- :mod:`.classifier_free`: classifier-free guidance (Ho & Salimans 2021), the null label as reference;
- :mod:`.autoguidance`: autoguidance (Karras et al. 2024), a weak model as reference;
- :mod:`.classifier`: classifier guidance (Dhariwal & Nichol 2021), the gradient of a noise-conditional classifier;
- :mod:`.clip`: CLIP guidance (Nichol et al. 2021, GLIDE), the gradient of a CLIP image-text similarity;
- :mod:`.interval`: the noise levels where guidance acts (Kynkaenniemi et al. 2024);
- :mod:`.guided_denoiser` (sigma space, :class:`~diffusers_edm.EDMPipeline`) and :mod:`.learned_variance` (DDPM form,
  :class:`~diffusers_edm.LearnedVariancePipeline`) compose them once per pipeline call.
"""

from .autoguidance import Autoguidance, check_guidance_denoiser
from .classifier import (
    DEFAULT_CLASSIFIER_SCALE,
    ClassifierGuidance,
    check_classifier,
    check_classifier_labels,
    check_classifier_scale,
)
from .clip import (
    MAX_CLIP_GUIDANCE_SCALE,
    ClipGuidance,
    NoiseAwareCLIPModel,
    check_clip_guidance,
    check_clip_guidance_scale,
    clip_normalization,
    clip_text_embeddings,
)
from .classifier_free import ClassifierFreeGuidance, ClassifierFreeNoiseGuidance, check_guidance_scale, extrapolate
from .guided_denoiser import ConditionalDenoiser, GuidedDenoiser
from .interval import GuidanceInterval, check_guidance_interval
from .learned_variance import ConditionalNoisePredictor, GuidedNoisePredictor, GuidedPrediction

__all__ = [
    "Autoguidance",
    "ClassifierFreeGuidance",
    "ClassifierFreeNoiseGuidance",
    "ClassifierGuidance",
    "ClipGuidance",
    "ConditionalDenoiser",
    "ConditionalNoisePredictor",
    "DEFAULT_CLASSIFIER_SCALE",
    "GuidanceInterval",
    "GuidedDenoiser",
    "GuidedNoisePredictor",
    "GuidedPrediction",
    "MAX_CLIP_GUIDANCE_SCALE",
    "NoiseAwareCLIPModel",
    "check_classifier",
    "check_classifier_labels",
    "check_classifier_scale",
    "check_clip_guidance",
    "check_clip_guidance_scale",
    "check_guidance_denoiser",
    "check_guidance_interval",
    "check_guidance_scale",
    "clip_normalization",
    "clip_text_embeddings",
    "extrapolate",
]
