"""Evaluation metrics."""

from .bits_per_dim import BitsPerDimOutput, bits_per_dim

__all__ = ["BitsPerDimOutput", "bits_per_dim"]
