"""Pretrained diffusers checkpoints (Stable Diffusion 1.x / 2.x, SDXL, EDM-formulated SDXL) as denoisers ``D(x; sigma)``.

A discrete VP model (Ho et al. 2020) was trained on a table ``alpha_bar_t``, ``t = 0..T-1``, with
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``. Karras et al. 2022 ("EDM", section 2 and Table 1, VP column)
read it in sigma space: the noisy sample ``x = y + sigma n`` enters the network as ``x / sqrt(sigma^2 + 1)`` at the
fractional training timestep ``t(sigma)`` whose table sigma is ``sigma`` (linear interpolation of ``log sigma``), and

- an eps model gives ``D = x - sigma eps`` (``c_skip = 1``, ``c_out = -sigma``, ``c_in = 1/sqrt(sigma^2 + 1)``);
- a v model (Salimans & Ho 2022, section 4) gives ``D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v``, EDM's
  preconditioning with ``sigma_data = 1``;
- an x_0 model (``"sample"``) gives ``D = F``.

EDM-formulated checkpoints (Playground v2.5; CosXL) ship an ``EDMEulerScheduler`` /
``EDMDPMSolverMultistepScheduler`` config: the network is EDM's F (``c_noise = ln(sigma) / 4``, ``sigma_data`` from
the config), and diffusers' ``"v_prediction"`` there flips the sign of ``c_out``.

:func:`checkpoint_formulation` is the one place that decides which of the two a checkpoint is, from its scheduler
config; :func:`pretrained_denoiser` wraps the UNet accordingly.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
# ModelMixin is imported by name: diffusers' pipeline loader looks the base classes up in a component's module.
from diffusers import ModelMixin, SchedulerMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config

from ..noise_schedules import betas_for_schedule, table_timestep
from ..schedulers.model_call import DiscreteVPModelCall
from ..value_checks import check_increasing_pair, check_real
from .preconditioned_denoisers import EDMPrecond, PreconditionedDenoiser
from .preconditioning import Preconditioning, edm_preconditioning

#: diffusers' scheduler classes of EDM-formulated checkpoints (the network is EDM's F, conditioned on ln(sigma) / 4).
EDM_SCHEDULER_CLASSES = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
#: What a discrete VP network may return (diffusers' names): eps, v or x_0.
DISCRETE_VP_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: What diffusers' EDM schedulers read the network's output as: F with c_out's sign as in EDM, or flipped.
EDM_PREDICTION_TYPES = ("epsilon", "v_prediction")


class DiscreteVPPrecond(PreconditionedDenoiser):
    """A pretrained discrete-time VP network (DDPM table) as ``D(x; sigma)``, for every ``sigma`` in the table's range.

    ``c_in = 1/sqrt(sigma^2 + 1)``; ``c_noise = t(sigma)``, the fractional training timestep (linear interpolation of
    ``log sigma`` over the table ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``; a table level gives its integer
    timestep exactly); and by ``prediction_type``:

    - ``"epsilon"``: ``c_skip = 1``, ``c_out = -sigma``;
    - ``"v_prediction"``: ``c_skip = 1/(sigma^2 + 1)``, ``c_out = -sigma/sqrt(sigma^2 + 1)``;
    - ``"sample"``: ``c_skip = 0``, ``c_out = 1``.

    Build it with ``DiscreteVPPrecond.from_backbone(unet, scheduler=pipe.scheduler)`` (or with the table's keywords).
    The table's ``log sigma_t`` is a float64 buffer (not saved: the config defines it, and casting the model to
    float16 / bfloat16 leaves it float64), so ``forward`` computes the timestep on the model's device.

    Args:
        backbone_class, backbone_config, num_classes, null_class_label, label_dropout: see
            :class:`~diffusers_edm.models.EDMPrecond`.
        prediction_type: what the network returns: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        num_train_timesteps, beta_schedule, beta_start, beta_end, trained_betas: the training table, as in diffusers'
            scheduler configs (``trained_betas`` overrides the schedule).
    """

    @register_to_config
    def __init__(
        self,
        backbone_class: str,
        backbone_config: dict[str, Any],
        prediction_type: str = "epsilon",
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        trained_betas: list[float] | None = None,
        num_classes: int = 0,
        null_class_label: int | None = None,
        label_dropout: float = 0.0,
    ):
        if not isinstance(prediction_type, str) or prediction_type not in DISCRETE_VP_PREDICTION_TYPES:
            raise ValueError(
                f"Unknown prediction_type {prediction_type!r} for a discrete VP model; expected one of "
                f"{DISCRETE_VP_PREDICTION_TYPES}."
            )
        betas = betas_for_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas)
        # The scheduler-side adapter of the same model owns the table (its checks and its sigmas): one statement.
        self._table = DiscreteVPModelCall(prediction_type, betas)
        super().__init__(backbone_class, backbone_config, num_classes, null_class_label, label_dropout)
        self.register_buffer("log_table_sigmas", self._table_tensor(torch.device("cpu")), persistent=False)
        # DistributedDataParallel would broadcast every buffer at every forward; this one is the same on every rank.
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["log_table_sigmas"])

    @classmethod
    def from_backbone(
        cls, backbone: torch.nn.Module, scheduler: SchedulerMixin | Mapping[str, Any] | None = None, **config: Any
    ) -> "DiscreteVPPrecond":
        """Wrap ``backbone`` (used as is) with the table and prediction type of ``scheduler`` (a diffusers scheduler or
        its config), e.g. ``DiscreteVPPrecond.from_backbone(pipe.unet, scheduler=pipe.scheduler)``; keywords in
        ``config`` override the scheduler's."""
        if scheduler is not None:
            config = {**discrete_vp_table_config(scheduler), **config}
        return super().from_backbone(backbone, **config)

    def _table_tensor(self, device: torch.device) -> torch.Tensor:
        # float64 where the device has it (MPS has none): dtype casts of the model cannot coarsen the levels.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        return torch.from_numpy(self._table.log_train_sigmas).to(device=device, dtype=dtype)

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        # Rebuilt from the config's values rather than converted: `.half()` would round them, and a move from the
        # meta device (`to_empty`, empty-weight loading) would leave them uninitialised.
        self.log_table_sigmas = self._table_tensor(self.log_table_sigmas.device)
        return module

    @property
    def train_sigmas(self) -> np.ndarray:
        """The table's ``sigma_t``, ``t = 0..T-1`` (float64, host: reading it never waits for the device)."""
        return self._table.train_sigmas

    @property
    def sigma_min(self) -> float:
        """``sigma_0``, the table's smallest level."""
        return self._table.table_range[0]

    @property
    def sigma_max(self) -> float:
        """``sigma_{T-1}``, the table's largest level."""
        return self._table.table_range[1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional training timestep ``t(sigma)`` (float64 where the device has it), computed on ``sigma``'s
        device from the table buffer."""
        return table_timestep(sigma.to(self.log_table_sigmas.dtype).log(), self.log_table_sigmas)

    def preconditioning(self, sigma: torch.Tensor) -> Preconditioning:
        c_noise = self.timestep(sigma).to(torch.float32)
        sigma = sigma.to(torch.float32)
        c_in = (sigma.square() + 1).rsqrt()
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        elif prediction_type == "v_prediction":
            c_skip, c_out = c_in.square(), -sigma * c_in
        else:
            c_skip, c_out = torch.zeros_like(sigma), torch.ones_like(sigma)
        return Preconditioning(c_skip=c_skip, c_out=c_out, c_in=c_in, c_noise=c_noise)


class EDMFormulatedPrecond(EDMPrecond):
    """An EDM-formulated diffusers checkpoint (Playground v2.5, CosXL): EDM's preconditioning (Table 1) with
    ``c_noise = ln(sigma) / 4``, and ``c_out`` negated for ``prediction_type="v_prediction"`` (diffusers' EDM
    schedulers' convention):

    ``D = sd^2/(sigma^2+sd^2) x -/+ sigma sd/sqrt(sigma^2+sd^2) F(x/sqrt(sigma^2+sd^2); ln(sigma)/4)``.

    Args:
        prediction_type: ``"epsilon"`` (EDM's F as is) or ``"v_prediction"`` (``c_out`` negated).
        the others: see :class:`~diffusers_edm.models.EDMPrecond`.
    """

    @register_to_config
    def __init__(
        self,
        backbone_class: str,
        backbone_config: dict[str, Any],
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        prediction_type: str = "epsilon",
        num_classes: int = 0,
        null_class_label: int | None = None,
        label_dropout: float = 0.0,
    ):
        if not isinstance(prediction_type, str) or prediction_type not in EDM_PREDICTION_TYPES:
            raise ValueError(
                f"Unknown prediction_type {prediction_type!r} for an EDM-formulated model; expected one of "
                f"{EDM_PREDICTION_TYPES}."
            )
        check_real("sigma_data", sigma_data, minimum=0.0, exclusive_minimum=True)
        check_real("sigma_min", sigma_min, minimum=0.0)
        check_real("sigma_max", sigma_max, minimum=0.0, exclusive_minimum=True, allow_infinity=True)
        check_increasing_pair("sigma_min", sigma_min, "sigma_max", sigma_max)
        PreconditionedDenoiser.__init__(self, backbone_class, backbone_config, num_classes, null_class_label, label_dropout)

    def preconditioning(self, sigma: torch.Tensor) -> Preconditioning:
        coefficients = edm_preconditioning(sigma, self.config.sigma_data)
        if self.config.prediction_type == "v_prediction":
            return coefficients._replace(c_out=-coefficients.c_out)
        return coefficients


def _scheduler_config(scheduler_or_config: object) -> tuple[str, dict[str, Any]]:
    """``(class name, config dict)`` of a diffusers scheduler instance or of its config (a dict with ``_class_name``)."""
    if isinstance(scheduler_or_config, SchedulerMixin):
        return type(scheduler_or_config).__name__, dict(scheduler_or_config.config)
    if isinstance(scheduler_or_config, Mapping):
        config = dict(scheduler_or_config)
        return str(config.get("_class_name", "a scheduler config without _class_name")), config
    raise ValueError(
        f"Expected a diffusers scheduler or its config (a dict), got {type(scheduler_or_config).__name__}."
    )


def _is_discrete_vp(config: Mapping[str, Any]) -> bool:
    has_table = "num_train_timesteps" in config and ("beta_schedule" in config or config.get("trained_betas") is not None)
    return has_table and config.get("prediction_type", "epsilon") in DISCRETE_VP_PREDICTION_TYPES


def discrete_vp_table_config(scheduler_or_config: SchedulerMixin | Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`DiscreteVPPrecond` keywords (table and prediction type) of a discrete VP scheduler or config;
    ``ValueError`` naming the scheduler class when it has no DDPM table."""
    name, config = _scheduler_config(scheduler_or_config)
    if name in EDM_SCHEDULER_CLASSES or not _is_discrete_vp(config):
        raise ValueError(_unsupported_message(name, config))
    trained_betas = config.get("trained_betas")
    return dict(
        prediction_type=config.get("prediction_type", "epsilon"),
        num_train_timesteps=int(config["num_train_timesteps"]),
        beta_schedule=config.get("beta_schedule", "linear"),
        beta_start=float(config.get("beta_start", 0.0001)),
        beta_end=float(config.get("beta_end", 0.02)),
        trained_betas=None if trained_betas is None else [float(beta) for beta in trained_betas],
    )


def _unsupported_message(name: str, config: Mapping[str, Any]) -> str:
    return (
        f"Cannot read the scheduler {name} (prediction_type={config.get('prediction_type')!r}) as a denoiser: expected "
        f"a discrete VP table (a scheduler config with num_train_timesteps and beta_schedule or trained_betas, "
        f"prediction_type in {DISCRETE_VP_PREDICTION_TYPES}; e.g. DDPMScheduler, EulerDiscreteScheduler, "
        f"DPMSolverMultistepScheduler) or an EDM formulation ({' or '.join(EDM_SCHEDULER_CLASSES)}, prediction_type in "
        f"{EDM_PREDICTION_TYPES})."
    )


def checkpoint_formulation(scheduler_or_config: SchedulerMixin | Mapping[str, Any]) -> str:
    """How a checkpoint's network is read, from its scheduler (or scheduler config): ``"edm"`` for an EDM scheduler
    class (:data:`EDM_SCHEDULER_CLASSES`), ``"discrete_vp"`` for a config with a DDPM table; ``ValueError`` naming
    the scheduler class and what is supported otherwise."""
    name, config = _scheduler_config(scheduler_or_config)
    if name in EDM_SCHEDULER_CLASSES:
        if config.get("prediction_type", "epsilon") not in EDM_PREDICTION_TYPES:
            raise ValueError(_unsupported_message(name, config))
        return "edm"
    if not _is_discrete_vp(config):
        raise ValueError(_unsupported_message(name, config))
    return "discrete_vp"


def pretrained_denoiser(
    unet: torch.nn.Module, scheduler_or_config: SchedulerMixin | Mapping[str, Any], **config: Any
) -> PreconditionedDenoiser:
    """The denoiser ``D(x; sigma)`` of a pretrained diffusers UNet, read from the scheduler (or scheduler config) it
    was released with: the one place that decides how a checkpoint is read.

    - An EDM scheduler class (:data:`EDM_SCHEDULER_CLASSES`): :class:`EDMFormulatedPrecond` with the config's
      ``sigma_data``, ``sigma_min``, ``sigma_max`` and ``prediction_type``.
    - A scheduler config with a DDPM table (DDPM, DDIM, PNDM, Euler, DPM-Solver, ... configs):
      :class:`DiscreteVPPrecond` over that table.
    - Anything else: ``ValueError`` naming the scheduler class and what is supported.

    ``unet`` is used as is (not copied); ``config`` passes further wrapper keywords (``label_dropout``, ...).
    """
    name, scheduler_config = _scheduler_config(scheduler_or_config)
    if checkpoint_formulation(scheduler_or_config) == "edm":
        edm_config = dict(
            sigma_data=float(scheduler_config.get("sigma_data", 0.5)),
            sigma_min=float(scheduler_config.get("sigma_min", 0.002)),
            sigma_max=float(scheduler_config.get("sigma_max", 80.0)),
            prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        )
        return EDMFormulatedPrecond.from_backbone(unet, **{**edm_config, **config})
    return DiscreteVPPrecond.from_backbone(unet, scheduler=scheduler_config | {"_class_name": name}, **config)
