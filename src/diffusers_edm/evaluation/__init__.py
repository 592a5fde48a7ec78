"""Evaluation metrics."""

from .bits_per_dim import BitsPerDimOutput, bits_per_dim
from .generate import GenerationSummary, LabelRule, generate_images, parse_seeds

__all__ = ["BitsPerDimOutput", "bits_per_dim"]
__all__ += ["GenerationSummary", "LabelRule", "generate_images", "parse_seeds"]
