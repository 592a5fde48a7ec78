"""The two feature networks of EDM's and EDM2's sample-quality metrics, applied to 8-bit RGB images.

- **Inception-v3** (FID; Heusel et al. 2017, as computed by EDM, Karras et al. 2022, Sec. 5 and Appendix F): NVIDIA's
  TorchScript translation of TensorFlow's ``inception-2015-12-05`` graph, the network that EDM's ``fid.py``,
  StyleGAN2-ADA / StyleGAN3's metrics and clean-fid use. It takes uint8-valued NCHW images of any size, resizes them
  to 299 x 299 itself with TensorFlow's resampling (as EDM and clean-fid's ``legacy_tensorflow`` mode; clean-fid's
  default ``clean`` mode resizes with PIL first), and ``return_features=True`` returns the 2048-d pool features.
- **DINOv2 ViT-L/14** (FD_DINOv2; EDM2, Karras et al. 2024, after Stein et al. 2023) through transformers'
  ``Dinov2Model``, with EDM2's preprocessing: uint8 values resized to 224 x 224 (bicubic, antialiased), scaled to
  [0, 1], normalised by ImageNet's mean and std; the features are the class token after the final layer norm
  (``pooler_output``), 1024-d.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..process_state import process_state

#: Where stylegan2-ada-pytorch (and the projects built on it) download the TorchScript Inception-v3.
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_NAME = "inception-v3-tf-2015-12-05"
DINOV2_MODEL_ID = "facebook/dinov2-large"  # ViT-L/14, as EDM2
DINOV2_NAME = "dinov2"
DINOV2_RESOLUTION = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURES = ("inception", "dinov2")




def inception_cache_path() -> Path:
    """Where the Inception TorchScript file is kept: ``<torch hub dir>/checkpoints/inception-2015-12-05.pt``
    (``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``), the folder ``torch.hub`` downloads weights to."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(INCEPTION_URL)


class InceptionFeatures(torch.nn.Module):
    """Inception-v3 pool features ``(N, 2048)`` of uint8-valued RGB images ``(N, 3, H, W)``.

    Args:
        detector: the TorchScript network, called as ``detector(images, return_features=True)`` (as EDM's ``fid.py``).
        source: where it was loaded from (recorded in the statistics).
    """

    name = INCEPTION_NAME

    def __init__(self, detector: torch.nn.Module, source: str = "") -> None:
        super().__init__()
        self.detector = detector
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "InceptionFeatures":
        """From a local TorchScript file ``path``, or (None) from :func:`inception_cache_path`, downloaded from
        :data:`INCEPTION_URL` by the main process first when missing."""
        source = str(path) if path is not None else INCEPTION_URL
        if path is None:
            path = inception_cache_path()
            with process_state().main_process_first():
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    torch.hub.download_url_to_file(INCEPTION_URL, str(path), progress=process_state().is_main_process)
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--feature_model {str(path)!r} is not a file; for Inception it must be the TorchScript file inception-2015-12-05.pt.")
        with warnings.catch_warnings():  # NVIDIA publishes this network only as TorchScript, which torch deprecates
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
            try:
                detector = torch.jit.load(str(path), map_location="cpu")
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"--feature_model {str(path)!r} is not a TorchScript file (inception-2015-12-05.pt): {error}") from None
        return cls(detector.eval(), source)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: uint8 ``(N, 3, H, W)``; the network resizes to 299 x 299 itself."""
        return self.detector(images, return_features=True)


class DINOv2Features(torch.nn.Module):
    """DINOv2 class-token features ``(N, hidden_size)`` of uint8-valued RGB images ``(N, 3, H, W)``, preprocessed as
    EDM2's detector: ``x = (resize_224(x) / 255 - mean) / std`` with a bicubic, antialiased resize (in float, not
    clamped) and ImageNet's ``mean`` / ``std``; the features are ``pooler_output``, the class token of the last
    hidden state after the final layer norm.

    Args:
        model: a transformers ``Dinov2Model``.
        source: where it was loaded from (recorded in the statistics).
    """

    name = DINOV2_NAME

    def __init__(self, model: torch.nn.Module, source: str = "") -> None:
        super().__init__()
        self.model = model
        self.source = source
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "DINOv2Features":
        """From a local folder ``path`` (``save_pretrained`` of a ``Dinov2Model``), or (None) ``facebook/dinov2-large``
        from the Hub (downloaded to the Hugging Face cache by the main process first)."""
        from transformers import AutoModel

        if path is not None and not (Path(path) / "config.json").is_file():
            raise ValueError(
                f"--feature_model {str(Path(path))!r} is not a folder holding a saved transformers Dinov2Model "
                f"(config.json and weights, as save_pretrained writes them)."
            )
        source = str(Path(path)) if path is not None else DINOV2_MODEL_ID
        try:
            with process_state().main_process_first():
                model = AutoModel.from_pretrained(source)
        except (OSError, ValueError) as error:  # no weights, an unknown config, or (default model) no connection
            raise ValueError(f"--feature_model {source!r}: transformers cannot load a DINOv2 model from it: {error}") from None
        if getattr(model.config, "model_type", None) != "dinov2":
            raise ValueError(f"--feature_model {source!r} holds a {model.config.model_type!r} model, not DINOv2 (model_type 'dinov2').")
        return cls(model.eval(), source)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: uint8 ``(N, 3, H, W)``."""
        x = torch.nn.functional.interpolate(
            images.to(torch.float32), size=(DINOV2_RESOLUTION, DINOV2_RESOLUTION), mode="bicubic", antialias=True
        )
        x = (x / 255.0 - self.mean) / self.std
        return self.model(pixel_values=x).pooler_output


def load_feature_network(features: str, path: str | os.PathLike | None = None) -> InceptionFeatures | DINOv2Features:
    """``features`` ``"inception"`` or ``"dinov2"``; ``path`` a local network (see each class's ``load``) or None for
    the published one, downloaded on first use."""
    if features == "inception":
        return InceptionFeatures.load(path)
    if features == "dinov2":
        return DINOv2Features.load(path)
    raise ValueError(f"features must be one of {FEATURES}, got {features!r}.")
