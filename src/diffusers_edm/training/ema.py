"""EDM's exponential moving average of the weights, as a diffusers ``EMAModel``.

EDM (Karras et al. 2022, Appendix F, training configurations) defines the EMA by a half-life in images
rather than a per-step decay: ``h = ema_halflife_kimg * 1000``, ramped as ``h = min(h, n_img * ema_rampup_ratio)``,
and ``beta = 0.5 ** (batch_size / max(h, 1e-8))``, ``ema = lerp(param, ema, beta)``, where ``n_img`` counts the
training images seen *before* this step (EDM advances its counter after the update, so the first update has
``h = 0``, ``beta = 0`` and copies the weights). diffusers' ``EMAModel`` applies exactly that lerp with
``decay = beta``; only its decay rule (``(1 + s) / (10 + s)``, capped) differs, so this class replaces ``get_decay``
and keeps everything else (``copy_to``, ``store``/``restore``, ``state_dict`` for Accelerate checkpoints).
"""

from __future__ import annotations

from typing import Iterable

import torch
from diffusers.training_utils import EMAModel


class EDMEMAModel(EMAModel):
    """EMA with EDM's half-life-in-images decay.

    Args:
        parameters: the parameters to track.
        batch_size: images per optimizer step (the global batch, all processes and accumulation steps).
        ema_halflife_kimg: half-life of the average in thousands of images (EDM: 500 for CIFAR-10).
        ema_rampup_ratio: the half-life is at most this fraction of the images seen so far (EDM: 0.05); None disables.
    """

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        batch_size: int,
        ema_halflife_kimg: float = 500.0,
        ema_rampup_ratio: float | None = 0.05,
        **kwargs,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if not ema_halflife_kimg >= 0:
            raise ValueError(f"ema_halflife_kimg must be >= 0, got {ema_halflife_kimg}.")
        if ema_rampup_ratio is not None and not ema_rampup_ratio > 0:
            raise ValueError(f"ema_rampup_ratio must be > 0 or None, got {ema_rampup_ratio}.")
        super().__init__(parameters, **kwargs)
        self.batch_size = batch_size
        self.ema_halflife_kimg = ema_halflife_kimg
        self.ema_rampup_ratio = ema_rampup_ratio

    def get_decay(self, optimization_step: int) -> float:
        """``beta = 0.5 ** (batch_size / max(h, 1e-8))`` with ``h = min(halflife_kimg * 1000, n_img * rampup_ratio)``.

        ``EMAModel.step`` counts the step before it asks for the decay, so ``optimization_step`` is 1 at the first
        update; EDM's ``n_img`` is the images seen before the update, ``(optimization_step - 1) * batch_size``.
        """
        seen_nimg = (optimization_step - 1) * self.batch_size
        halflife_nimg = self.ema_halflife_kimg * 1000
        if self.ema_rampup_ratio is not None:
            halflife_nimg = min(halflife_nimg, seen_nimg * self.ema_rampup_ratio)
        return 0.5 ** (self.batch_size / max(halflife_nimg, 1e-8))

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(
            batch_size=self.batch_size, ema_halflife_kimg=self.ema_halflife_kimg, ema_rampup_ratio=self.ema_rampup_ratio
        )
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        for key in ("batch_size", "ema_halflife_kimg", "ema_rampup_ratio"):
            if key in state_dict and state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"The checkpoint's EMA has {key}={state_dict[key]!r} but this run uses {getattr(self, key)!r}; "
                    "resume with the same batch size and EMA settings."
                )
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in ("batch_size", "ema_halflife_kimg", "ema_rampup_ratio")})
