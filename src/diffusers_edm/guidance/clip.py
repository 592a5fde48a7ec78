"""CLIP guidance (Nichol et al. 2021, "GLIDE: Towards Photorealistic Image Generation and Editing with Text-Guided
Diffusion Models", section 2.4).

GLIDE replaces the classifier of classifier guidance (Dhariwal & Nichol 2021, Algorithm 2) by a CLIP model: the
log-probability of the caption ``c`` given the image is taken as the similarity of CLIP's image and text embeddings,
``log p(c | x) ~ s cos(E_img(x), E_txt(c))`` (both embeddings L2-normalised, so GLIDE's dot product ``f(x) . g(c)``
is their cosine). GLIDE moves the DDPM mean by ``s Sigma grad_{x_t} (f(x_t, t) . g(c))`` with a noise-aware CLIP;
in sigma space, exactly as for a classifier (see :mod:`.classifier`), the denoiser becomes::

    D'(x; sigma) = D(x; sigma) + s sigma^2 grad_x sim(x; sigma),   sim = cos(E_img(image(x; sigma)), E_txt(c))

and the sampler is unchanged. Two image encoders are accepted:

- an ordinary transformers ``CLIPModel`` (the "clean" variant): CLIP never saw noisy images, so it embeds the
  denoiser's current estimate of the clean image, ``image = D(x; sigma)`` (the plain conditional model, not the
  classifier-free-guided one, so the term costs one forward and one backward of the denoiser; decoded by the pipeline's
  :class:`~diffusers_edm.models.LatentCodec` when the denoiser works on latents), and the gradient is taken through
  the denoiser (and the VAE decoder). CLIP's own input is prepared here, differentiably: the image is mapped from
  [-1, 1] to [0, 1], a single channel is repeated to RGB, the image is resized (bicubic, antialiased) to CLIP's
  ``vision_config.image_size`` square as a whole, and normalised by the image processor's ``image_mean`` /
  ``image_std`` (OpenAI CLIP's when none is given). Resizing the whole image, rather than the processor's
  shortest-edge resize and centre crop, lets the gradient reach every pixel;
- a :class:`NoiseAwareCLIPModel` (GLIDE's noise-aware CLIP): its image encoder reads the noisy sample itself,
  ``image = x`` at ``sigma``, in the denoiser's data space (latents for a latent denoiser), so no gradient passes
  through the denoiser.

The text embedding is computed once per pipeline call (:func:`clip_text_embeddings`, one row per sample). The term
is an additive correction of :class:`~.guided_denoiser.GuidedDenoiser`, like classifier guidance: it adds to
classifier-free guidance or autoguidance, and the guidance interval decides where it acts. Gradients are taken in
float32 (float64 for float64 samples) under ``torch.enable_grad()`` (pipelines sample under ``no_grad``), with one
backward pass for the batch: the samples are independent, so the gradient of ``sum_i sim_i`` with respect to ``x_i``
is that of sample ``i``'s own similarity. ``s = 0`` builds no term at all.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers import CLIPModel, PreTrainedTokenizerBase
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..models import LatentCodec
from ..value_checks import check_real
from .classifier import per_sample
from .guided_denoiser import GuidanceTerm

#: The largest CLIP guidance scale accepted. The similarity is a cosine, so ``s cos`` is a log-likelihood surrogate in
#: ``[-s, s]``: at ``s = 1000`` the implied ratio of ``p(c | x)`` between a matching and an opposite image is
#: ``e^2000``, far beyond any useful sharpening; at the top of EDM's range (sigma = 80) the term ``s sigma^2 grad sim``
#: is then ``6.4e6`` times the gradient, so any gradient above ``1e-6`` already swamps an image in [-1, 1].
MAX_CLIP_GUIDANCE_SCALE = 1000.0


class NoiseAwareCLIPModel(torch.nn.Module, abc.ABC):
    """A CLIP model whose image encoder reads noisy samples (GLIDE's noise-aware CLIP), for :class:`ClipGuidance`.

    Subclasses implement both towers; the image tower gets the noisy sample in the denoiser's data space (latents for
    a latent denoiser) and its noise level, as the denoiser does.
    """

    @abc.abstractmethod
    def forward(self, sample: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The image embedding ``E_img(x; sigma)`` of the noisy samples ``x = y + sigma n``, ``(B, D)``
        (``sigma``: a Python float, a 0-d tensor or one value per sample)."""

    @abc.abstractmethod
    def get_text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The text embedding ``E_txt(c)`` of tokenized captions, ``(B, D)``."""


def check_clip_guidance_scale(clip_guidance_scale: object, has_clip_model: bool) -> float:
    """The CLIP guidance scale ``s`` of a call, a number in ``[0, MAX_CLIP_GUIDANCE_SCALE]`` (0: no CLIP guidance).

    ``None`` is 0 without a CLIP model; with one it must be given (GLIDE states no scale for the clean variant, and the
    useful range depends on the CLIP model). ``ValueError`` naming the value otherwise, and for ``s > 0`` without a CLIP
    model.
    """
    allowed = f"a number in [0, {MAX_CLIP_GUIDANCE_SCALE:g}] (0: no CLIP guidance)"
    if clip_guidance_scale is None:
        if has_clip_model:
            raise ValueError(f"A clip_model was given without clip_guidance_scale; pass {allowed}.")
        return 0.0
    scale = check_real("clip_guidance_scale", clip_guidance_scale, minimum=0.0, maximum=MAX_CLIP_GUIDANCE_SCALE,
                       allowed=allowed)
    if scale > 0 and not has_clip_model:
        raise ValueError(
            f"clip_guidance_scale={clip_guidance_scale!r} needs a clip_model (a transformers CLIPModel or a "
            "NoiseAwareCLIPModel) and its clip_tokenizer; use 0 or None."
        )
    return scale


def check_clip_guidance(
    clip_model: object,
    clip_tokenizer: object,
    clip_image_processor: object = None,
    image_channels: int | None = None,
) -> None:
    """``ValueError`` unless ``clip_model`` is a ``CLIPModel`` or a :class:`NoiseAwareCLIPModel` with a tokenizer, an
    optional image processor has a usable ``image_mean`` / ``image_std``, and (clean variant) the images it embeds
    (``image_channels``: the decoded images' channels) are RGB or single-channel."""
    if not isinstance(clip_model, (CLIPModel, NoiseAwareCLIPModel)):
        raise ValueError(
            "clip_model must be a transformers CLIPModel (clean CLIP guidance on D(x; sigma)) or a NoiseAwareCLIPModel "
            f"(an image encoder of noisy samples), got {type(clip_model).__name__}."
        )
    if not isinstance(clip_tokenizer, PreTrainedTokenizerBase):
        raise ValueError(
            "CLIP guidance needs the clip_model's tokenizer to embed the prompt: pass clip_tokenizer (a transformers "
            f"tokenizer such as CLIPTokenizer), got {type(clip_tokenizer).__name__}."
        )
    if clip_image_processor is not None:
        clip_normalization(clip_image_processor)
    if isinstance(clip_model, CLIPModel) and image_channels is not None and image_channels not in (1, 3):
        raise ValueError(
            f"CLIP embeds RGB (or single-channel) images, but the images to embed have {image_channels} channels."
        )


def clip_normalization(clip_image_processor: object = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(image_mean, image_std)`` of a ``CLIPImageProcessor`` (three finite numbers each, std > 0), or OpenAI CLIP's
    when ``None``; ``ValueError`` naming the bad value otherwise."""
    if clip_image_processor is None:
        return tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)
    statistics = []
    for name, minimum in (("image_mean", None), ("image_std", 0.0)):
        values = getattr(clip_image_processor, name, None)
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = (values,) * 3
        if not isinstance(values, Sequence) or len(values) != 3:
            raise ValueError(
                f"clip_image_processor.{name} must be three numbers (one per RGB channel), got {values!r}."
            )
        statistics.append(tuple(
            check_real(f"clip_image_processor.{name}", value, minimum=minimum, exclusive_minimum=True)
            if minimum is not None else check_real(f"clip_image_processor.{name}", value)
            for value in values
        ))
    return statistics[0], statistics[1]


def clip_text_embeddings(
    clip_model: CLIPModel | NoiseAwareCLIPModel,
    clip_tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[str],
    batch_size: int,
    device: torch.device | str,
) -> torch.Tensor:
    """``E_txt(c) / |E_txt(c)|`` for each of ``batch_size`` samples, ``(batch_size, D)`` float32 on ``device``.

    ``prompt``: one caption for all samples, or a list whose length divides ``batch_size``; each caption then serves
    ``batch_size / len(prompt)`` consecutive samples (diffusers' ``num_images_per_prompt`` order). Tokenized to the
    tokenizer's ``model_max_length`` (padded, truncated), embedded once (once per pipeline call).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"CLIP guidance needs a prompt: a string or a non-empty list of strings, got {prompt!r}.")
    if batch_size % len(prompts) != 0:
        raise ValueError(
            f"CLIP guidance got {len(prompts)} prompts for {batch_size} samples; give one prompt, or a list whose "
            "length divides the number of samples."
        )
    tokens = clip_tokenizer(
        prompts, padding="max_length", max_length=clip_tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    parameter = next(clip_model.parameters(), None)
    model_device = parameter.device if parameter is not None else torch.device(device)
    with torch.no_grad():
        features = embedding(clip_model.get_text_features(input_ids=tokens.input_ids.to(model_device)))
    features = F.normalize(features.to(device=device, dtype=torch.float32), dim=-1)
    return features.repeat_interleave(batch_size // len(prompts), dim=0)


def embedding(features: Any) -> torch.Tensor:
    """The projected embedding of a ``CLIPModel.get_*_features`` result: the tensor itself, or the
    ``pooler_output`` of the model output transformers 5 returns."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


class ClipGuidance:
    """The CLIP guidance term ``s sigma^2 grad_x cos(E_img(image(x; sigma)), E_txt(c))`` (see the module docstring).

    Args:
        conditional: the plain conditional model ``D(x; sigma)`` whose estimate the clean variant embeds.
        clip_model: a ``CLIPModel`` (clean variant) or a :class:`NoiseAwareCLIPModel`.
        text_embeds: ``E_txt(c)``, one row per sample (:func:`clip_text_embeddings`), on the samples' device.
        scale: the CLIP guidance scale ``s > 0``.
        codec: the pipeline's latent codec when the denoiser works on latents (clean variant: ``D`` is decoded).
        image_size: CLIP's input resolution (default: ``clip_model.config.vision_config.image_size``; another size
            interpolates CLIP's position embeddings).
        image_mean, image_std: CLIP's input normalisation (default: OpenAI CLIP's; :func:`clip_normalization` reads
            them from a ``CLIPImageProcessor``).
    """

    def __init__(
        self,
        conditional: GuidanceTerm,
        clip_model: CLIPModel | NoiseAwareCLIPModel,
        text_embeds: torch.Tensor,
        scale: float,
        codec: LatentCodec | None = None,
        image_size: int | None = None,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
    ):
        self.conditional = conditional
        self.clip_model = clip_model
        self.noise_aware = isinstance(clip_model, NoiseAwareCLIPModel)
        self.text_embeds = F.normalize(text_embeds, dim=-1)
        self.scale = float(scale)
        self.codec = codec
        self.image_size, self.interpolate_pos_encoding = None, False
        if not self.noise_aware:
            native_size = int(clip_model.config.vision_config.image_size)
            self.image_size = int(image_size or native_size)
            self.interpolate_pos_encoding = self.image_size != native_size
        # Device tensors once per call: the hot path builds nothing from Python lists.
        statistics = torch.tensor([list(image_mean), list(image_std)], dtype=torch.float32)
        self.image_mean, self.image_std = statistics.to(text_embeds.device).reshape(2, 1, 3, 1, 1).unbind(0)

    @classmethod
    def from_prompt(
        cls,
        conditional: GuidanceTerm,
        clip_model: CLIPModel | NoiseAwareCLIPModel,
        clip_tokenizer: PreTrainedTokenizerBase,
        prompt: str | Sequence[str],
        scale: float,
        batch_size: int,
        device: torch.device | str,
        codec: LatentCodec | None = None,
        clip_image_processor: object = None,
    ) -> "ClipGuidance | None":
        """The term of one pipeline call (``None`` for ``scale = 0``: no term, exactly the unguided samples), with
        the prompt embedded once. ``scale`` is checked by :func:`check_clip_guidance_scale`, the models here."""
        if scale == 0:
            return None
        check_clip_guidance(clip_model, clip_tokenizer, clip_image_processor)
        mean, std = clip_normalization(clip_image_processor)
        text_embeds = clip_text_embeddings(clip_model, clip_tokenizer, prompt, batch_size, device)
        return cls(conditional, clip_model, text_embeds, scale, codec=codec, image_mean=mean, image_std=std)

    @classmethod
    def for_pipeline(
        cls,
        pipeline: Any,
        conditional: GuidanceTerm,
        prompt: str | Sequence[str] | None,
        batch_size: int,
        device: torch.device | str,
        clip_model: object = None,
        clip_tokenizer: object = None,
        clip_guidance_scale: object = None,
        clip_image_processor: object = None,
    ) -> "ClipGuidance | None":
        """The term of one call of an EDM pipeline from its CLIP call arguments (all checked here, once per call), or
        ``None`` for ``clip_guidance_scale = 0``. A latent pipeline's ``vae`` decodes ``D`` for a ``CLIPModel``
        (``pipeline.config.latent_space``, ``pipeline.vae``, ``pipeline.denoiser`` are read)."""
        scale = check_clip_guidance_scale(clip_guidance_scale, clip_model is not None)
        if clip_model is None:
            return None
        noise_aware = isinstance(clip_model, NoiseAwareCLIPModel)
        latent = bool(pipeline.config.latent_space) and not noise_aware
        if latent and pipeline.vae is None:
            raise ValueError(
                "CLIP guidance with a CLIPModel embeds decoded images, but this latent pipeline has no vae; load it "
                "with its vae (or use a NoiseAwareCLIPModel that reads latents)."
            )
        channels = pipeline.vae.config.out_channels if latent else pipeline.denoiser.image_channels
        check_clip_guidance(clip_model, clip_tokenizer, clip_image_processor, None if noise_aware else channels)
        if scale == 0:
            return None
        if prompt is None:
            raise ValueError(
                "CLIP guidance embeds the prompt's text with the clip_model: pass prompt (prompt_embeds carry no text)."
            )
        codec = LatentCodec(pipeline.vae) if latent else None
        return cls.from_prompt(
            conditional, clip_model, clip_tokenizer, prompt, scale, batch_size, device, codec, clip_image_processor
        )

    def clip_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's ``pixel_values`` of images in [-1, 1]: to [0, 1], RGB, resized to ``image_size`` square (bicubic,
        antialiased), normalised by ``(image - mean) / std``; differentiable."""
        channels = images.shape[1]
        if channels not in (1, 3):
            raise ValueError(f"CLIP embeds RGB (or single-channel) images, got images with {channels} channels.")
        images = (images + 1) / 2
        if channels == 1:
            images = images.expand(-1, 3, -1, -1)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True
            )
        return (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)

    def image_embeds(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``E_img(image(x; sigma))``, ``(B, D)``, differentiable in ``x``: the noise-aware encoder at ``(x, sigma)``,
        or CLIP's image tower on ``D(x; sigma)`` (decoded by the codec where there is one)."""
        if self.noise_aware:
            return self.clip_model(x, sigma)
        images = self.conditional(x, sigma)
        if self.codec is not None:
            images = self.codec.decode(images)
        pixels = self.clip_pixels(images.to(x.dtype)).to(self.clip_model.dtype)
        return embedding(
            self.clip_model.get_image_features(
                pixel_values=pixels, interpolate_pos_encoding=self.interpolate_pos_encoding
            )
        )

    def similarity(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``sim_i = cos(E_img(image(x_i; sigma_i)), E_txt(c_i))`` per sample, ``(B,)``."""
        image_embeds = F.normalize(self.image_embeds(x, sigma).to(x.dtype), dim=-1)
        return (image_embeds * self.text_embeds.to(x.dtype)).sum(dim=-1)

    def similarity_gradient(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``grad_x sum_i sim_i`` (sample ``i``'s own gradient in row ``i``), in float32 (float64 for float64 ``x``)."""
        with torch.enable_grad():
            x = x.detach().to(torch.promote_types(x.dtype, torch.float32)).requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.similarity(x, sigma).sum(), x)
        return gradient

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The change of ``D``: ``s sigma^2 grad_x sim(x; sigma)``."""
        gradient = self.similarity_gradient(x, sigma)
        return (self.scale * per_sample(sigma, gradient) ** 2) * gradient
