"""Moving averages of the weights, as diffusers ``EMAModel`` subclasses: EDM's half-life EMA and EDM2's power-function
EMA (``--ema_type edm|power``; :func:`make_ema` is the one place that picks).

EDM (Karras et al. 2022, Appendix F, training configurations) defines the EMA by a half-life in images
rather than a per-step decay: ``h = ema_halflife_kimg * 1000``, ramped as ``h = min(h, n_img * ema_rampup_ratio)``,
and ``beta = 0.5 ** (batch_size / max(h, 1e-8))``, ``ema = lerp(param, ema, beta)``, where ``n_img`` counts the
training images seen *before* this step (EDM advances its counter after the update, so the first update has
``h = 0``, ``beta = 0`` and copies the weights). diffusers' ``EMAModel`` applies exactly that lerp with
``decay = beta``; only its decay rule (``(1 + s) / (10 + s)``, capped) differs, so this class replaces ``get_decay``
and keeps everything else (``copy_to``, ``store``/``restore``, ``state_dict`` for Accelerate checkpoints).

EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", section 3 and
Appendix C) averages with a power-function profile instead: the EMA at time ``t`` weighs the weights of time
``tau <= t`` by ``tau^gamma``, whose relative std ``sigma_rel`` (the profile's width over its length) replaces the
half-life. Tracking two such averages and storing snapshots of them lets any other ``sigma_rel`` be reconstructed
after training (:mod:`diffusers_edm.training.posthoc_ema`).
"""

from __future__ import annotations

import argparse
import math
from typing import Iterable, Sequence

import numpy as np
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


# ---------------------------------------------------------------------------------------------- power-function EMA
#: The largest relative std a power-function profile has (gamma = 0, the uniform average): sqrt(1 / 12).
MAX_SIGMA_REL = math.sqrt(1 / 12)


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative std of the averaging profile ``t^gamma`` on ``[0, T]`` (Karras et al. 2024, eq. 123):
    ``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))``."""
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma}.")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent of the profile of relative std ``sigma_rel`` (Karras et al. 2024, eq. 126 and Algorithm 2): the
    largest real root of ``gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0``.

    ``sigma_rel`` must lie in ``(0, sqrt(1/12))``: the profiles ``t^gamma``, ``gamma > 0``, cover exactly that range.
    """
    if not (math.isfinite(sigma_rel) and 0 < sigma_rel < MAX_SIGMA_REL):
        raise ValueError(
            f"A relative EMA std must lie in (0, {MAX_SIGMA_REL:.6f}) (the power-function profiles t^gamma, gamma > 0), "
            f"got {sigma_rel}."
        )
    try:
        inverse_square = sigma_rel**-2
    except OverflowError:  # e.g. 1e-160: the exponent (about sigma_rel^-2) is no float
        raise ValueError(f"A relative EMA std of {sigma_rel} is too small: its profile exponent overflows.") from None
    roots = np.roots([1.0, 7.0, 16.0 - inverse_square, 12.0 - inverse_square])
    return float(roots[np.abs(roots.imag) <= 1e-9 * np.abs(roots).max()].real.max())


def power_function_beta(gamma: float, batch_size: int, n_img: int) -> float:
    """The per-step decay of a power-function EMA (Karras et al. 2024, eq. 127):
    ``beta = (1 - batch_size / n_img)^(gamma + 1)``, ``n_img`` the images seen *including* this step's batch (so the
    first update has ``beta = 0`` and copies the weights)."""
    return (1 - batch_size / n_img) ** (gamma + 1)


class PowerFunctionEMAModel(EMAModel):
    """One power-function EMA: ``ema = beta ema + (1 - beta) theta`` with :func:`power_function_beta`, which averages
    the weights seen so far with the profile ``t^gamma`` (exactly, for weights that are constant within a step).

    Args:
        parameters: the parameters to track.
        gamma: the profile's exponent (see :func:`sigma_rel_to_gamma`).
        batch_size: images per optimizer step (the global batch).
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], gamma: float, batch_size: int, **kwargs):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be finite and >= 0, got {gamma}.")
        super().__init__(parameters, **kwargs)
        self.gamma = float(gamma)
        self.batch_size = batch_size

    def get_decay(self, optimization_step: int) -> float:
        """``(1 - batch / n_img)^(gamma + 1)`` with ``n_img = optimization_step * batch`` (``EMAModel.step`` counts
        the step before asking, so ``n_img`` includes this step's images, as in EDM2)."""
        return power_function_beta(self.gamma, self.batch_size, optimization_step * self.batch_size)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gamma": self.gamma, "batch_size": self.batch_size}

    def load_state_dict(self, state_dict: dict) -> None:
        _refuse_other_settings(self, state_dict, ("gamma", "batch_size"))
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in ("gamma", "batch_size")})


class PowerFunctionEMA:
    """EDM2's power-function EMAs of the same parameters, one per relative std (``--ema_stds``), behind the interface
    of one ``EMAModel`` (``step``, ``copy_to``, ``store``/``restore``, ``state_dict``): ``copy_to`` gives the *first*
    std's average, which is what validation and the export at the end of training use. The snapshots that let any
    other EMA length be reconstructed after training are written by
    :class:`~diffusers_edm.training.posthoc_ema.EMASnapshotWriter`.

    Args:
        parameters: the parameters to track.
        stds: relative stds of the tracked profiles (EDM2: 0.05 and 0.10), each in ``(0, sqrt(1/12))``.
        batch_size: images per optimizer step (the global batch).
        foreach: diffusers' fused update (one kernel per average rather than one per tensor).
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], stds: Sequence[float], batch_size: int, foreach: bool = False):
        parameters = list(parameters)
        if len(stds) < 1:
            raise ValueError("PowerFunctionEMA needs at least one relative std.")
        self.stds = tuple(float(std) for std in stds)
        self.gammas = tuple(sigma_rel_to_gamma(std) for std in self.stds)
        self.batch_size = batch_size
        self.averages = [PowerFunctionEMAModel(parameters, gamma, batch_size, foreach=foreach) for gamma in self.gammas]

    @property
    def optimization_step(self) -> int:
        return self.averages[0].optimization_step

    @property
    def cur_decay_value(self) -> float | None:
        """The last decay of the first std's average (logged as ``ema_decay``)."""
        return self.averages[0].cur_decay_value

    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        parameters = list(parameters)
        for average in self.averages:
            average.step(parameters)

    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Copy the first std's average into ``parameters``."""
        self.averages[0].copy_to(parameters)

    def store(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        self.averages[0].store(parameters)

    def restore(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        self.averages[0].restore(parameters)

    def state_dict(self) -> dict:
        return {"stds": list(self.stds), "batch_size": self.batch_size, "averages": [a.state_dict() for a in self.averages]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = {"stds": tuple(float(std) for std in state_dict["stds"]), "batch_size": state_dict["batch_size"]}
        _refuse_other_settings(self, saved, ("stds", "batch_size"))
        for average, state in zip(self.averages, state_dict["averages"]):
            average.load_state_dict(state)


def _refuse_other_settings(ema: object, state_dict: dict, keys: Sequence[str]) -> None:
    for key in keys:
        if key in state_dict and state_dict[key] != getattr(ema, key):
            raise ValueError(
                f"The checkpoint's EMA has {key}={state_dict[key]!r} but this run uses {getattr(ema, key)!r}; "
                "resume with the same batch size and EMA settings."
            )


def make_ema(args: argparse.Namespace, parameters: Sequence[torch.nn.Parameter], batch_size: int) -> EDMEMAModel | PowerFunctionEMA:
    """The run's EMA (``--ema_type``): EDM's half-life EMA, or EDM2's power-function EMAs at ``--ema_stds``."""
    if args.ema_type == "power":
        return PowerFunctionEMA(parameters, args.ema_stds, batch_size, foreach=True)
    return EDMEMAModel(
        parameters, batch_size=batch_size,
        ema_halflife_kimg=args.ema_halflife_kimg,
        ema_rampup_ratio=args.ema_rampup_ratio if args.ema_rampup_ratio > 0 else None,
        foreach=True,  # one fused update instead of a Python loop over every tensor (~3.5x faster)
    )
