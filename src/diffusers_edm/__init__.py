"""diffusers-edm: the EDM design space (Karras et al. 2022) and Improved-DDPM learned variances for Diffusers.

``ModelMixin`` and ``SchedulerMixin`` are re-exported so that a ``model_index.json`` entry
``["diffusers_edm", "ClassName"]`` loads through ``DiffusionPipeline.from_pretrained``
(diffusers looks these base classes up in the named library).
"""

from diffusers import ModelMixin, SchedulerMixin

from .evaluation import BitsPerDimOutput, bits_per_dim
from .gaussian_diffusion import DiscreteGaussianDiffusion, space_timesteps
from .losses import (
    DenoisingLossOutput,
    EDMLoss,
    HybridLossOutput,
    IDDPMLoss,
    VELoss,
    VPLoss,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    normal_kl,
    prior_bits,
    vlb_term_bits,
)
from .models import (
    DiscreteVPPrecond,
    EDMFormulatedPrecond,
    EDMPrecond,
    IDDPMPrecond,
    LatentCodec,
    NoiseConditionalClassifier,
    NoiseConditionalClassifierOutput,
    PreconditionedDenoiser,
    PreconditionedDenoiserOutput,
    Preconditioning,
    VEPrecond,
    VPPrecond,
    checkpoint_formulation,
    pretrained_denoiser,
)
from .pipelines import (
    EDMPipeline,
    EDMTextToImagePipeline,
    LearnedVariancePipeline,
    LearnedVarianceTextToImagePipeline,
    PromptEncoder,
)
from .training.stable_diffusion_export import export_stable_diffusion
from .schedulers import (
    EDMHeunDiscreteScheduler,
    EDMHeunScheduler,
    EDMMultistepDiscreteScheduler,
    EDMMultistepScheduler,
    LearnedVarianceDDPMScheduler,
)
from .training import (
    EDMEMAModel,
    LossSecondMomentTimestepSampler,
    TimestepSampler,
    UniformTimestepSampler,
    create_timestep_sampler,
)

__version__ = "0.1.0"

__all__ = [
    "BitsPerDimOutput",
    "DenoisingLossOutput",
    "DiscreteGaussianDiffusion",
    "DiscreteVPPrecond",
    "EDMEMAModel",
    "EDMFormulatedPrecond",
    "EDMHeunDiscreteScheduler",
    "EDMHeunScheduler",
    "EDMMultistepDiscreteScheduler",
    "EDMMultistepScheduler",
    "EDMLoss",
    "EDMPipeline",
    "EDMPrecond",
    "EDMTextToImagePipeline",
    "HybridLossOutput",
    "IDDPMLoss",
    "IDDPMPrecond",
    "LearnedVarianceDDPMScheduler",
    "LatentCodec",
    "LearnedVariancePipeline",
    "LearnedVarianceTextToImagePipeline",
    "LossSecondMomentTimestepSampler",
    "ModelMixin",
    "NoiseConditionalClassifier",
    "NoiseConditionalClassifierOutput",
    "PreconditionedDenoiser",
    "PreconditionedDenoiserOutput",
    "PromptEncoder",
    "Preconditioning",
    "SchedulerMixin",
    "TimestepSampler",
    "UniformTimestepSampler",
    "VELoss",
    "VEPrecond",
    "VPLoss",
    "VPPrecond",
    "bits_per_dim",
    "checkpoint_formulation",
    "create_timestep_sampler",
    "discretized_gaussian_log_likelihood",
    "export_stable_diffusion",
    "hybrid_loss",
    "normal_kl",
    "pretrained_denoiser",
    "prior_bits",
    "space_timesteps",
    "vlb_term_bits",
]
