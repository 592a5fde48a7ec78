"""The one map between a VAE's latents and the latents a diffusion model is trained and sampled on.

A diffusers ``AutoencoderKL`` config may carry ``scaling_factor``, ``shift_factor`` (SD3 / Flux style) and per-channel
``latents_mean`` / ``latents_std`` (SDXL-derived models such as Playground v2.5). The diffusion model sees

- ``z = (E(x) - mean) * scaling_factor / std`` when the config has ``latents_mean`` and ``latents_std``,
- ``z = (E(x) - shift_factor) * scaling_factor`` when it has ``shift_factor``,
- ``z = E(x) * scaling_factor`` otherwise,

and decoding inverts the same formula before ``vae.decode``. Training (encode) and every pipeline (decode) use this
module, so the two directions cannot drift apart.
"""

from __future__ import annotations

import math

import torch


class LatentCodec:
    """Encode images to model latents and decode model latents to images with one VAE.

    Built once per training run or pipeline call: the per-channel statistics become tensors once per device
    (never a host-to-device copy per step).
    """

    def __init__(self, vae: torch.nn.Module):
        config = vae.config
        self.vae = vae
        scaling_factor = getattr(config, "scaling_factor", None)
        self.scaling_factor = 1.0 if scaling_factor is None else _finite("scaling_factor", scaling_factor, positive=True)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if (mean is None) != (std is None):
            raise ValueError(
                f"The VAE config has only one of latents_mean / latents_std (latents_mean={mean}, latents_std={std}); "
                "the latent normalisation needs both or neither."
            )
        shift = getattr(config, "shift_factor", None)
        if mean is not None and shift:
            raise ValueError(
                f"The VAE config has both shift_factor={shift} and latents_mean / latents_std; expected one normalisation."
            )
        self.shift_factor = 0.0 if shift is None else _finite("shift_factor", shift, positive=False)
        self._mean = None if mean is None else _channel_statistic("latents_mean", mean, positive=False)
        self._std = None if std is None else _channel_statistic("latents_std", std, positive=True)
        channels = int(config.latent_channels)
        for name, values in (("latents_mean", self._mean), ("latents_std", self._std)):
            if values is not None and values.shape[1] != channels:
                raise ValueError(f"{name} has {values.shape[1]} entries for a VAE with {channels} latent channels.")
        self._per_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._per_device:
            self._per_device[device] = (self._mean.to(device), self._std.to(device))
        return self._per_device[device]

    def normalize(self, vae_latents: torch.Tensor) -> torch.Tensor:
        """``E(x)`` -> model latents: ``(E(x) - mean) * scale / std``, ``(E(x) - shift) * scale`` or ``E(x) * scale``."""
        vae_latents = vae_latents.to(torch.float32)
        if self._mean is not None:
            mean, std = self._statistics(vae_latents.device)
            return (vae_latents - mean) * self.scaling_factor / std
        return (vae_latents - self.shift_factor) * self.scaling_factor

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Model latents -> ``E(x)`` space, the inverse of :meth:`normalize`."""
        latents = latents.to(torch.float32)
        if self._mean is not None:
            mean, std = self._statistics(latents.device)
            return latents * std / self.scaling_factor + mean
        return latents / self.scaling_factor + self.shift_factor

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Model latents (float32) of images in [-1, 1]: a sample of the VAE posterior, then :meth:`normalize`."""
        with torch.no_grad():
            posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
            return self.normalize(posterior.sample(generator=generator))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in about [-1, 1] (float32) from model latents: :meth:`denormalize`, then ``vae.decode``."""
        vae_latents = self.denormalize(latents).to(self.vae.dtype)
        return self.vae.decode(vae_latents, return_dict=False)[0].to(torch.float32)


def _finite(name: str, value: object, positive: bool) -> float:
    """A VAE config number as a float; ``ValueError`` naming it unless finite (and > 0 when ``positive``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(f"The VAE config's {name} must be a finite number{' > 0' if positive else ''}, got {value!r}.")
    return number


def _channel_statistic(name: str, values: object, positive: bool) -> torch.Tensor:
    """Per-channel ``latents_mean`` / ``latents_std`` as a float32 ``(1, C, 1, 1)`` tensor, checked once."""
    try:
        tensor = torch.tensor(values, dtype=torch.float64).reshape(1, -1, 1, 1)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"The VAE config's {name} must be a list of numbers, one per latent channel, got {values!r}.") from error
    if not bool(torch.isfinite(tensor).all()) or (positive and not bool((tensor > 0).all())):
        raise ValueError(f"The VAE config's {name} must hold finite numbers{' > 0' if positive else ''}, got {values!r}.")
    return tensor.to(torch.float32)
