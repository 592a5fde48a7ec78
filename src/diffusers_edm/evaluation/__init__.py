"""Evaluation metrics."""

from .bits_per_dim import BitsPerDimOutput, bits_per_dim
from .feature_networks import DINOv2Features, InceptionFeatures, load_feature_network
from .fid import FeatureStatistics, ImageSource, compute_statistics, frechet_distance, open_images
from .generate import GenerationSummary, LabelRule, generate_images, parse_seeds

__all__ = ["BitsPerDimOutput", "bits_per_dim"]
__all__ += ["GenerationSummary", "LabelRule", "generate_images", "parse_seeds"]
__all__ += ["DINOv2Features", "FeatureStatistics", "ImageSource", "InceptionFeatures", "compute_statistics"]
__all__ += ["frechet_distance", "load_feature_network", "open_images"]
