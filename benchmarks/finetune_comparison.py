"""Fine-tuning a pretrained Stable Diffusion-architecture model on a new concept (issue #17): diffusers' epsilon-MSE
recipe, diffusers' EDM-style recipe and the package's EDM recipe at equal steps, batch, optimizer, learning rate and
training seeds.

**Base model** (built once, cached in ``--work-dir``): a tiny ``StableDiffusionPipeline`` on the embedded 8x8 digits.

- VAE: an ``AutoencoderKL`` with one encoder / decoder block (no downsampling: 8x8 RGB pixels <-> 4x8x8 latents),
  trained here with the reconstruction MSE plus a small KL term (Kingma & Welling 2014; the weight ``KL_WEIGHT``)
  on the *training* split of both the normal and the inverted digits: a generic codec, as Stable Diffusion's VAE is,
  so the codec does not cap what the UNet can learn of the new concept. ``scaling_factor`` is 1 / the latents' std
  (Rombach et al. 2022, section 4.3.2: unit-variance latents).
- Text: :func:`~diffusers_edm.training.captions.build_local_tokenizer` over every caption (so "inverted" is one token,
  as an everyday word is in CLIP's vocabulary) and the frozen, randomly initialised
  :func:`~diffusers_edm.training.captions.build_local_text_encoder` (seed 0).
- UNet: a 2-level ``UNet2DConditionModel`` pretrained on the *normal* training digits with their eight captions
  (:func:`~diffusers_edm.training.data.digit_captions`, one drawn per image and step) by diffusers'
  ``examples/text_to_image/train_text_to_image.py`` recipe: ``DDPMScheduler`` with Stable Diffusion's
  ``scaled_linear`` table (0.00085 .. 0.012, 1000 steps), timesteps uniform over 0..999, ``add_noise``, MSE on eps.

**New concept**: the inverted digits (``255 - p``, i.e. ``-x`` in [-1, 1]) captioned "an inverted digit N"; the
train / held-out split is the class-stratified split of :mod:`benchmarks.digits_split`.

**Arms** (all full fine-tuning of the UNet from the same base; VAE and text encoder frozen; ``finetune_steps`` steps
of batch ``finetune_batch`` (:data:`FULL` / :data:`QUICK`), AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay 1e-2: diffusers' defaults) at the same
constant learning rate, gradient norm clipped to 1, no EMA, no caption dropout; each arm fine-tuned once per
training seed of ``--train-seeds`` (default ``0``), the seed setting only the arm's own draws: data order, captions,
noise and noise levels; ``--seed`` for ``package-edm``):

- ``diffusers-eps``: ``train_text_to_image.py``'s loop, as for the base.
- ``diffusers-edm-style``: ``examples/dreambooth/train_dreambooth_lora_sdxl.py --do_edm_style_training`` on a
  checkpoint without an EDM scheduler, written here as that script does it: the scheduler is
  ``EulerDiscreteScheduler.from_pretrained(..., subfolder="scheduler")``; ``indices ~ U{0..999}`` index
  ``scheduler.timesteps``; ``noisy = scheduler.add_noise(y, n, t)`` (``y + sigma n``); ``sigma`` is found by exact
  float equality of ``t`` in ``scheduler.timesteps`` (huggingface/diffusers#7406); the UNet reads
  ``noisy / sqrt(sigma^2 + 1)`` at ``t``; the output is preconditioned ``D = noisy - sigma eps`` and the loss is
  ``mean(sigma^-2 (D - y)^2)``, the weight that script applies "for a non-EDM scheduler". Right after construction an
  ``EulerDiscreteScheduler`` holds the table's 1000 levels (``use_karras_sigmas`` acts only in ``set_timesteps``,
  which the script never calls), so for an eps checkpoint this is the same objective as ``diffusers-eps``
  (``sigma^-2 |D - y|^2 = |eps_hat - n|^2``) reached through a different code path; the 1000-level Karras grid and
  the unweighted loss (huggingface/diffusers#6041) are that script's path for an EDM-formulated checkpoint
  (``EDMEulerScheduler``), which this base is not.
- ``package-edm``: the real ``diffusers-edm-train --pretrained_model_name_or_path BASE`` (its Python entry point,
  in this process) on a local image folder of the inverted training digits with a ``metadata.jsonl`` caption column:
  EDM's loss (Karras et al. 2022, eq. 8 with Table 1's ``lambda(sigma) = (sigma^2 + sigma_data^2) /
  (sigma sigma_data)^2``), the recipe's default ``ln sigma ~ N(-1.2 + ln(sigma_data / 0.5), 1.2^2)`` (EDM's
  ``P_mean`` moved to the ``sigma_data`` measured on the latents) truncated to the table's ``[sigma_0, sigma_999]``,
  through the package's ``DiscreteVPPrecond`` view of the UNet. Its export (a stock ``StableDiffusionPipeline``
  folder) is what is scored.

**Scores** (the same for every arm and for the base before fine-tuning):

- Held-out denoising error per noise level: for each held-out inverted digit (its VAE posterior mean as latent
  ``y``, captioned), ``x = y + sigma n`` with the same ``n`` for every arm, at each ``sigma`` of :data:`SIGMAS`;
  ``D(x; sigma)`` from the arm's UNet through ``DiscreteVPPrecond.from_backbone(unet, scheduler=...)`` (Karras et
  al. 2022, Table 1, VP column read in sigma; the UNet's integer timestep at a table sigma, interpolated between);
  the plain x0-MSE ``mean |D - y|^2`` per sigma (+/- its standard error over images; arms are compared per sigma by
  the paired standard error, as every arm sees the same images and noise), and an overall figure ``mean over sigmas
  of lambda(sigma) |D - y|^2`` with EDM's ``lambda`` (``sigma_data`` = the held-out latents' std), which puts the
  noise levels on one scale: ``lambda`` is the inverse of the error of the best affine denoiser of data with std
  ``sigma_data`` (``sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2)``), so a level scores about 1 where the model
  knows no more than the data's scale.
- Samples: for each prompt "an inverted digit 0" ... "9", ``per_prompt`` images from seeds ``SAMPLE_SEED + j`` (one
  generator per image: column j of every grid starts from the same noise), every arm with the same sampler
  (``EDMTextToImagePipeline.from_stable_diffusion(pipe)``, the package's ``EDMMultistepScheduler``, ``sample_steps``
  steps, no guidance). Frechet distance to the held-out inverted digits in the features of
  :class:`benchmarks.digit_classifier.DigitClassifier` (trained here on the normal *and* inverted training digits,
  labels = digit), with the spread of the same distance over class-balanced draws of as many real inverted training
  digits (:func:`benchmarks.sample_quality.real_frechet_spread`); prompt adherence (the classifier reads the
  prompt's digit) and the samples' mean pixel value (real inverted digits: +0.38; normal ones: -0.38).
- Sanity check of the base: its samples for its own pretraining prompts "a handwritten 0" ... "9", scored against the
  held-out *normal* digits in the same features.

**Training seeds.** The base, the classifier, the held-out noise and the sample seeds are fixed; only the arms'
training seed varies. Every score is reported per seed and, per arm, as the mean over seeds with its spread (min, max,
sample std); a difference between two arms is "beyond the seed spread" when their min-max ranges do not overlap.

Outputs (``benchmarks/results/``): ``finetune_comparison.md`` (tables), ``.json``, ``.png`` (held-out error per
sigma and Frechet distance; means over the training seeds with their min-max) and
``finetune_comparison_grid_<arm>.png`` (the first training seed only; rows = prompts, columns = sample seeds;
``base`` for the base on the new prompts, ``base_normal_prompts`` on its own).

Run: ``python -m benchmarks.finetune_comparison [--quick] [--train-seeds 0,1,2] [--work-dir DIR] [--device cpu|cuda]
[--output-dir DIR]``.
The base is cached in ``--work-dir`` (default ``runs/finetune_comparison``; ``--quick``: a temporary directory) and
rebuilt when its settings change.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import ImageOps

from benchmarks.digit_classifier import DigitScorer, FeatureFrechet, features_and_predictions, train_classifier
from benchmarks.digits_split import NUM_CLASSES, DigitsSplit, load_digits_split
from benchmarks.low_budget_quality import NEVER, budget_grid
from benchmarks.reporting import (
    REPOSITORY_PREFIX,
    common_arguments,
    machine_description,
    markdown_table,
    pyplot,
    restores_torch_threads,
    save_figure,
    start_run,
    write_record,
)
from benchmarks.sample_quality import accelerate_device, real_frechet_spread
from diffusers_edm.losses.weighting import edm_loss_weight
from diffusers_edm.models import DiscreteVPPrecond
from diffusers_edm.pipelines import EDMTextToImagePipeline
from diffusers_edm.training import train as package_training
from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.captions import build_local_text_encoder, build_local_tokenizer
from diffusers_edm.training.data import digit_captions

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = REPO_ROOT / "runs" / "finetune_comparison"
RESOLUTION = 8  # the embedded digits' native size
SEED = 0  # the base, the text encoder and the classifier; the arms' default training seed
SAMPLE_SEED = 1000  # column j of every grid is seed SAMPLE_SEED + j
NOISE_SEED = 2000  # the held-out noise n, the same for every arm
INVERTED_CAPTION = "an inverted digit {digit}"
PROMPTS = tuple(INVERTED_CAPTION.format(digit=d) for d in range(NUM_CLASSES))
#: The noise levels of the held-out error: log-spaced inside Stable Diffusion's table range [0.0292, 14.61].
SIGMAS = (0.04, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0)
KL_WEIGHT = 1e-3  # per latent element, against the per-pixel reconstruction MSE
# Stable Diffusion 1.x's training table (runwayml/stable-diffusion-v1-5, scheduler_config.json), as a DDPMScheduler,
# which is what train_text_to_image.py loads from a checkpoint's scheduler folder.
SD_TABLE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon", "clip_sample": False, "steps_offset": 1}
# diffusers' script defaults (train_text_to_image.py / train_dreambooth_lora_sdxl.py): AdamW, clip 1.0.
ADAM_BETAS, ADAM_EPSILON, WEIGHT_DECAY, MAX_GRAD_NORM = (0.9, 0.999), 1e-8, 1e-2, 1.0
ARMS = {
    "diffusers-eps": "diffusers train_text_to_image.py: eps-MSE, t ~ U{0..999}",
    "diffusers-edm-style": "diffusers train_dreambooth_lora_sdxl.py --do_edm_style_training (non-EDM scheduler path)",
    "package-edm": "diffusers-edm-train --pretrained_model_name_or_path: EDM loss, truncated log-normal sigma",
}
BASE = "base (before fine-tuning)"


@dataclass(frozen=True)
class FinetuneSettings:
    """Sizes of one run (full or ``--quick``); the full run's values are documented in benchmarks/README.md."""

    vae_steps: int
    vae_batch: int
    base_steps: int
    base_batch: int
    base_learning_rate: float
    finetune_steps: int
    finetune_batch: int
    finetune_learning_rate: float
    unet_channels: tuple[int, int]
    heldout_count: int  # held-out inverted digits scored (the first ones of the split; all 450 in the full run)
    concept_count: int | None  # inverted training digits the arms fine-tune on (the first ones; None: all 1,347)
    per_prompt: int
    sample_steps: int
    classifier_epochs: int

    def base_key(self) -> dict[str, Any]:
        """What the cached base depends on."""
        return {k: v for k, v in asdict(self).items() if k.startswith(("vae_", "base_", "unet_"))}


# Full: sized for a 2-core CPU shared with other jobs (~0.7 s per training step of batch 32 there, whatever the width:
# the step is overhead-bound), about 25 minutes in all.
FULL = FinetuneSettings(vae_steps=300, vae_batch=64, base_steps=700, base_batch=32, base_learning_rate=1e-3,
                        finetune_steps=200, finetune_batch=32, finetune_learning_rate=5e-4, unet_channels=(32, 64),
                        heldout_count=450, concept_count=None, per_prompt=20, sample_steps=12, classifier_epochs=10)
QUICK = FinetuneSettings(vae_steps=10, vae_batch=32, base_steps=10, base_batch=16, base_learning_rate=1e-3,
                         finetune_steps=6, finetune_batch=8, finetune_learning_rate=1e-3, unet_channels=(16, 32),
                         heldout_count=40, concept_count=64, per_prompt=1, sample_steps=3, classifier_epochs=1)


# ------------------------------------------------------------------------------------------------ data
@dataclass
class ConceptData:
    """The normal digits (pretraining) and the inverted ones (the new concept), as [-1, 1] tensors ``(N, 1, R, R)``."""

    normal: DigitsSplit
    inverted: DigitsSplit


def load_concept_data() -> ConceptData:
    """The digits split at 8x8 and its inversion (``-x`` in [-1, 1] is ``255 - p`` in 8-bit pixels, exactly)."""
    normal = load_digits_split(RESOLUTION)
    inverted = DigitsSplit(-normal.train_images, normal.train_labels, -normal.heldout_images, normal.heldout_labels,
                           [ImageOps.invert(image) for image in normal.train_pil])
    return ConceptData(normal, inverted)


def rgb(images: torch.Tensor) -> torch.Tensor:
    """Grayscale ``(N, 1, H, W)`` to the VAE's RGB, as the training command reads a grayscale image for a 3-channel
    model (the plane repeated)."""
    return images.expand(-1, 3, -1, -1).contiguous()


def write_caption_folder(images: Sequence[Any], labels: torch.Tensor, directory: Path) -> Path:
    """The inverted training digits as ``directory/NNNNN.png`` with ``metadata.jsonl`` (``file_name``, ``text``), the
    layout datasets' ``imagefolder`` (``--train_data_dir``) reads with a caption column."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (image, label) in enumerate(zip(images, labels.tolist())):
        name = f"{index:05d}.png"
        image.save(directory / name)
        lines.append(json.dumps({"file_name": name, "text": INVERTED_CAPTION.format(digit=label)}))
    (directory / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return directory


# ------------------------------------------------------------------------------------------------ base model
def train_vae(images: torch.Tensor, settings: FinetuneSettings, device: torch.device) -> AutoencoderKL:
    """A one-block ``AutoencoderKL`` (8x8 RGB <-> 4x8x8) trained with ``MSE + KL_WEIGHT * KL`` (both per element);
    ``scaling_factor`` set to 1 / the std of posterior samples of ``images``."""
    torch.manual_seed(SEED)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16,), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=8, sample_size=RESOLUTION).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(SEED)
    pixels = rgb(images).to(device)
    for _ in range(settings.vae_steps):
        batch = pixels[torch.randint(len(pixels), (settings.vae_batch,), generator=generator).to(device)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = F.mse_loss(reconstruction, batch) + KL_WEIGHT * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + 512]).latent_dist.sample() for i in range(0, len(pixels), 512)])
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    return vae


def make_unet(settings: FinetuneSettings, context_width: int) -> UNet2DConditionModel:
    """Stable Diffusion's UNet layout at toy size: a plain level at 8x8, a cross-attention level at 4x4."""
    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        sample_size=RESOLUTION, in_channels=4, out_channels=4, block_out_channels=settings.unet_channels,
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=context_width, attention_head_dim=8,
        norm_num_groups=8,
    )


class CaptionEmbeddings:
    """Frozen text-encoder states of each caption, computed once (the encoder is frozen in every arm), as diffusers'
    training scripts encode: ``text_encoder(tokenizer(caption, padding="max_length", truncation=True))[0]``."""

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module, captions: Sequence[str], device: torch.device):
        ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            states = text_encoder.to(device)(ids.to(device), return_dict=False)[0]
        self.index = {caption: i for i, caption in enumerate(captions)}
        self.states = states

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        return self.states[torch.tensor([self.index[c] for c in captions], device=self.states.device)]


def build_base(directory: Path, data: ConceptData, settings: FinetuneSettings, device: torch.device) -> dict[str, Any]:
    """Train the VAE, then pretrain the UNet with diffusers' eps recipe on the normal digits; save the
    ``StableDiffusionPipeline`` in ``directory`` (reused when ``directory/benchmark_base.json`` has these settings)."""
    record_path = directory / "benchmark_base.json"
    if record_path.is_file() and (directory / "model_index.json").is_file():
        record = json.loads(record_path.read_text())
        if record.get("settings") == json.loads(json.dumps(settings.base_key())):
            print(f"reusing the base model in {directory}", flush=True)
            return {**record, "reused": True}
    started = time.perf_counter()
    vae = train_vae(torch.cat([data.normal.train_images, data.inverted.train_images]), settings, device)
    vae_seconds = time.perf_counter() - started
    normal_captions = [c for d in range(NUM_CLASSES) for c in digit_captions(d)]
    tokenizer = build_local_tokenizer(normal_captions + list(PROMPTS))
    text_encoder = build_local_text_encoder(tokenizer, seed=SEED)
    unet = make_unet(settings, text_encoder.config.hidden_size).to(device)
    embeddings = CaptionEmbeddings(tokenizer, text_encoder, normal_captions, device)
    labels = data.normal.train_labels.tolist()
    losses = diffusers_training(
        unet, vae, rgb(data.normal.train_images), [digit_captions(label) for label in labels], embeddings, "epsilon",
        settings.base_steps, settings.base_batch, settings.base_learning_rate, device,
    )
    pipe = StableDiffusionPipeline(
        vae=vae.cpu(), text_encoder=text_encoder.cpu(), tokenizer=tokenizer, unet=unet.cpu().eval(),
        scheduler=DDPMScheduler(**SD_TABLE), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    record = {"settings": settings.base_key(), "vae_seconds": vae_seconds,
              "unet_seconds": time.perf_counter() - started - vae_seconds, "final_losses": losses[-20:],
              "scaling_factor": vae.config.scaling_factor}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return {**record, "reused": False}


def load_pipe(directory: Path, device: torch.device) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(directory, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ------------------------------------------------------------------------------------------------ diffusers' recipes
def diffusers_training(
    unet: UNet2DConditionModel, vae: AutoencoderKL, pixels: torch.Tensor, captions: Sequence[Sequence[str]],
    embeddings: CaptionEmbeddings, recipe: str, steps: int, batch: int, learning_rate: float, device: torch.device,
    scheduler_config: dict[str, Any] | None = None, seed: int = SEED,
) -> list[float]:
    """Full fine-tuning of ``unet`` as diffusers' scripts do it; returns the loss per step (read once, at the end).

    ``recipe="epsilon"``: train_text_to_image.py. ``recipe="edm_style"``: train_dreambooth_lora_sdxl.py with
    ``--do_edm_style_training`` on a non-EDM scheduler (module docstring). Each step: ``batch`` examples of a
    reshuffled-per-epoch order, one caption drawn per example, latents ``vae.encode(x).latent_dist.sample() *
    scaling_factor``.
    """
    config = scheduler_config or SD_TABLE
    if recipe == "epsilon":
        noise_scheduler = DDPMScheduler.from_config(config)
        step_loss = epsilon_loss
    elif recipe == "edm_style":
        noise_scheduler = EulerDiscreteScheduler.from_config(config)
        step_loss = edm_style_loss
    else:
        raise ValueError(f"recipe must be 'epsilon' or 'edm_style', got {recipe!r}.")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, betas=ADAM_BETAS, eps=ADAM_EPSILON,
                                  weight_decay=WEIGHT_DECAY)
    unet.train()
    pixels = pixels.to(device)
    order, position, losses = torch.randperm(len(pixels), generator=generator), 0, []
    for _ in range(steps):
        if position + batch > len(order):
            order, position = torch.randperm(len(pixels), generator=generator), 0
        index = order[position:position + batch]
        position += batch
        chosen = [captions[i][int(torch.randint(len(captions[i]), (1,), generator=generator))] for i in index.tolist()]
        with torch.no_grad():
            latents = vae.encode(pixels[index.to(device)]).latent_dist.sample() * vae.config.scaling_factor
        loss = step_loss(unet, noise_scheduler, latents, embeddings(chosen))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        losses.append(loss.detach())
    unet.eval()
    return torch.stack(losses).tolist()


def epsilon_loss(unet: UNet2DConditionModel, noise_scheduler: DDPMScheduler, latents: torch.Tensor,
                 states: torch.Tensor) -> torch.Tensor:
    """train_text_to_image.py: ``t ~ U{0..T-1}``, ``x_t = sqrt(abar_t) y + sqrt(1 - abar_t) n``, ``MSE(eps_hat, n)``."""
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),), device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps.long())
    prediction = unet(noisy, timesteps, states, return_dict=False)[0]
    return F.mse_loss(prediction.float(), noise.float(), reduction="mean")


def edm_style_loss(unet: UNet2DConditionModel, noise_scheduler: EulerDiscreteScheduler, latents: torch.Tensor,
                   states: torch.Tensor) -> torch.Tensor:
    """train_dreambooth_lora_sdxl.py ``--do_edm_style_training``, non-EDM scheduler, ``prediction_type="epsilon"``."""
    noise = torch.randn_like(latents)
    indices = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),))
    timesteps = noise_scheduler.timesteps[indices].to(device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    # The script's get_sigmas: each timestep's index by exact float equality in scheduler.timesteps (diffusers#7406).
    schedule_timesteps = noise_scheduler.timesteps.to(latents.device)
    step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps]
    sigmas = noise_scheduler.sigmas.to(device=latents.device, dtype=latents.dtype)[step_indices].flatten()
    sigmas = sigmas.reshape(-1, 1, 1, 1)
    inputs = noisy / ((sigmas**2 + 1) ** 0.5)
    prediction = unet(inputs, timesteps, states, return_dict=False)[0]
    prediction = prediction * (-sigmas) + noisy
    weighting = (sigmas**-2.0).float()
    loss = torch.mean((weighting * (prediction.float() - latents.float()) ** 2).reshape(len(latents), -1), 1)
    return loss.mean()


def finetune_with_diffusers_recipe(base_dir: Path, recipe: str, data: ConceptData, settings: FinetuneSettings,
                                   device: torch.device, seed: int = SEED
                                   ) -> tuple[StableDiffusionPipeline, dict[str, Any]]:
    """Arms ``diffusers-eps`` / ``diffusers-edm-style``: load the base, fine-tune its UNet on the inverted digits."""
    pipe = load_pipe(base_dir, device)
    embeddings = CaptionEmbeddings(pipe.tokenizer, pipe.text_encoder, PROMPTS, device)
    count = settings.concept_count
    labels = data.inverted.train_labels[:count].tolist()
    started = time.perf_counter()
    losses = diffusers_training(
        pipe.unet, pipe.vae, rgb(data.inverted.train_images[:count]), [[PROMPTS[label]] for label in labels], embeddings, recipe,
        settings.finetune_steps, settings.finetune_batch, settings.finetune_learning_rate, device,
        scheduler_config=dict(pipe.scheduler.config), seed=seed,
    )
    return pipe, {"seconds": time.perf_counter() - started, "steps": len(losses), "final_loss": losses[-1], "seed": seed}


# ------------------------------------------------------------------------------------------------ the package's recipe
def package_arguments(base_dir: Path, data_dir: Path, output_dir: Path, settings: FinetuneSettings,
                      seed: int = SEED) -> list[str]:
    """The ``diffusers-edm-train`` command line of arm ``package-edm`` (the same steps, batch, optimizer and seed)."""
    return [
        "--pretrained_model_name_or_path", str(base_dir), "--train_data_dir", str(data_dir), "--caption_column", "text",
        "--resolution", str(RESOLUTION), "--output_dir", str(output_dir), "--overwrite",
        "--max_train_steps", str(settings.finetune_steps), "--train_batch_size", str(settings.finetune_batch),
        "--learning_rate", str(settings.finetune_learning_rate), "--lr_rampup_kimg", "0",
        "--adam_beta1", str(ADAM_BETAS[0]), "--adam_beta2", str(ADAM_BETAS[1]), "--adam_epsilon", str(ADAM_EPSILON),
        "--weight_decay", str(WEIGHT_DECAY), "--max_grad_norm", str(MAX_GRAD_NORM), "--ema_halflife_kimg", "0",
        "--proportion_empty_prompts", "0", "--checkpointing_steps", NEVER, "--validation_steps", NEVER,
        "--num_validation_images", "2", "--sample_steps", "3", "--report_to", "none", "--seed", str(seed),
    ]


def finetune_with_package(base_dir: Path, data: ConceptData, work_dir: Path, settings: FinetuneSettings,
                          device: torch.device, seed: int = SEED) -> tuple[StableDiffusionPipeline, dict[str, Any]]:
    """Arm ``package-edm``: the training command on an image folder of the inverted digits; its stock export loaded."""
    count = settings.concept_count
    data_dir = write_caption_folder(data.inverted.train_pil[:count], data.inverted.train_labels[:count],
                                    work_dir / "inverted_digits")
    # One export folder for every seed (--overwrite): each export is loaded and scored before the next seed trains.
    arguments = package_arguments(base_dir, data_dir, work_dir / "package-edm", settings, seed)
    started = time.perf_counter()
    with accelerate_device(device):
        result = package_training.train(parse_args(arguments))
    seconds = time.perf_counter() - started
    if result.global_step != settings.finetune_steps:
        raise RuntimeError(f"package-edm stopped at step {result.global_step}, not {settings.finetune_steps}.")
    return load_pipe(Path(result.output_dir), device), {
        "seconds": seconds, "steps": result.global_step, "final_loss": result.losses[-1] if result.losses else None,
        "command": "diffusers-edm-train " + " ".join(arguments), "seed": seed,
    }


# ------------------------------------------------------------------------------------------------ held-out error
@dataclass
class HeldOut:
    """The held-out inverted digits as model latents (posterior means), their caption states and the fixed noise."""

    latents: torch.Tensor
    states: torch.Tensor
    noise: torch.Tensor  # (len(SIGMAS), N, 4, 8, 8)
    sigma_data: float


def heldout_set(pipe: StableDiffusionPipeline, data: ConceptData, count: int, device: torch.device) -> HeldOut:
    """Encode the first ``count`` held-out inverted digits with the base's (frozen, shared) VAE; draw the noise once."""
    pixels = rgb(data.inverted.heldout_images[:count]).to(device)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    embeddings = CaptionEmbeddings(pipe.tokenizer, pipe.text_encoder, PROMPTS, device)
    states = embeddings([PROMPTS[label] for label in data.inverted.heldout_labels[:count].tolist()])
    generator = torch.Generator().manual_seed(NOISE_SEED)
    noise = torch.randn((len(SIGMAS), *latents.shape), generator=generator).to(device)
    return HeldOut(latents, states, noise, float(latents.std()))


@torch.no_grad()
def heldout_errors(pipe: StableDiffusionPipeline, heldout: HeldOut, batch: int = 256) -> dict[str, Any]:
    """Per sigma of :data:`SIGMAS`: ``mean |D(y + sigma n; sigma) - y|^2`` over the held-out latents (and its standard
    error over images), ``D`` through ``DiscreteVPPrecond``; and the EDM-weighted mean over the sigmas."""
    denoiser = DiscreteVPPrecond.from_backbone(pipe.unet, scheduler=pipe.scheduler).eval()
    per_sigma, per_image = [], []
    for sigma, noise in zip(SIGMAS, heldout.noise):
        errors = []
        for start in range(0, len(heldout.latents), batch):
            y = heldout.latents[start:start + batch]
            denoised = denoiser(y + sigma * noise[start:start + batch], sigma,
                                encoder_hidden_states=heldout.states[start:start + batch]).sample
            errors.append((denoised - y).pow(2).flatten(1).mean(1))
        errors = torch.cat(errors).double().cpu()
        per_image.append(errors)
        # EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022, Table 1).
        weight = float(edm_loss_weight(torch.tensor(sigma, dtype=torch.float64), heldout.sigma_data))
        per_sigma.append({"sigma": sigma, "mse": float(errors.mean()),
                          "se": float(errors.std() / math.sqrt(len(errors))),
                          "weighted": weight * float(errors.mean())})
    return {"per_sigma": per_sigma, "edm_weighted_mean": sum(p["weighted"] for p in per_sigma) / len(per_sigma),
            "per_image": torch.stack(per_image)}


# ------------------------------------------------------------------------------------------------ samples
@torch.no_grad()
def sample_prompts(pipe: StableDiffusionPipeline, settings: FinetuneSettings,
                   prompts: Sequence[str] = PROMPTS) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``per_prompt`` images per prompt (one per digit 0-9) through the package's EDM sampler (the same for every
    arm): grayscale in [-1, 1] (the decoded RGB planes averaged), their prompts' digits, and the seconds it took."""
    started = time.perf_counter()
    sampler = EDMTextToImagePipeline.from_stable_diffusion(pipe)
    sampler.set_progress_bar_config(disable=True)
    seeds = [SAMPLE_SEED + j for j in range(settings.per_prompt) for _ in prompts]
    images = sampler(prompt=list(prompts) * settings.per_prompt, num_inference_steps=settings.sample_steps,
                     output_type="pt", generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    gray = images.float().cpu().mean(1, keepdim=True) * 2 - 1
    return gray, torch.arange(NUM_CLASSES).repeat(settings.per_prompt), time.perf_counter() - started


def fit_concept_scorer(data: ConceptData, settings: FinetuneSettings, device: torch.device) -> DigitScorer:
    """The benchmarks' digit classifier trained on the normal and inverted training digits (labels: the digit); its
    Frechet distance measured to the held-out inverted digits."""
    images = torch.cat([data.normal.train_images, data.inverted.train_images])
    labels = torch.cat([data.normal.train_labels, data.inverted.train_labels])
    classifier = train_classifier(images, labels, RESOLUTION, settings.classifier_epochs, device, seed=SEED)
    _, predictions = features_and_predictions(classifier, data.inverted.heldout_images)
    accuracy = float((predictions == data.inverted.heldout_labels).float().mean())
    return DigitScorer(data.inverted, classifier, accuracy, FeatureFrechet(classifier, data.inverted.heldout_images))


def sample_scores(images: torch.Tensor, labels: torch.Tensor, scorer: DigitScorer) -> dict[str, float]:
    """Frechet distance to the held-out inverted digits, adherence (+/- binomial SE) and the mean pixel value."""
    scores = scorer.frechet.score(images, labels)
    accuracy = scores["accuracy"]
    return {"frechet": scores["frechet"], "accuracy": accuracy,
            "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / len(labels)), "count": len(labels),
            "mean_pixel": float(images.mean())}


# ------------------------------------------------------------------------------------------------ training seeds
def parse_train_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``: distinct non-negative integers, at least one."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise ValueError(f"--train-seeds must be comma-separated non-negative integers such as '0,1,2', got {text!r}.")
    seeds = tuple(int(part) for part in parts)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--train-seeds must be distinct non-negative integers such as '0,1,2', got {text!r}.")
    return seeds


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, min, max and sample standard deviation (0 for one value) over the training seeds."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise_seeds(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One arm's row over its training seeds: every score the mean over seeds, with its :func:`spread`; the held-out
    SE over images of the per-image error averaged over seeds (the same images and noise in every seed); the grid
    and package command of the first seed; the per-seed rows under ``"seeds"``."""
    rows = list(runs.values())
    per_image = torch.stack([row["heldout"]["per_image"] for row in rows]).mean(0)  # (sigmas, images)
    per_sigma = []
    for k, sigma in enumerate(SIGMAS):
        points = [row["heldout"]["per_sigma"][k] for row in rows]
        errors = spread([p["mse"] for p in points])
        se = float(per_image[k].std() / math.sqrt(per_image.shape[1]))
        per_sigma.append({"sigma": sigma, "mse": errors["mean"], "se": se,
                          "weighted": statistics.fmean(p["weighted"] for p in points), "spread": errors})
    weighted = spread([row["heldout"]["edm_weighted_mean"] for row in rows])
    frechet = spread([row["samples"]["frechet"] for row in rows])
    accuracy = statistics.fmean(row["samples"]["accuracy"] for row in rows)
    count = sum(row["samples"]["count"] for row in rows)
    samples = {"frechet": frechet["mean"], "frechet_spread": frechet, "accuracy": accuracy,
               "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / count), "count": count,
               "mean_pixel": statistics.fmean(row["samples"]["mean_pixel"] for row in rows)}
    first = rows[0]["training"]
    training = {"seconds": statistics.fmean(row["training"]["seconds"] for row in rows), "steps": first["steps"],
                **({"command": first["command"]} if "command" in first else {}), "seeds": list(runs)}
    return {"heldout": {"per_sigma": per_sigma, "edm_weighted_mean": weighted["mean"], "edm_weighted_spread": weighted,
                        "per_image": per_image},
            "samples": samples, "sampling_seconds": statistics.fmean(row["sampling_seconds"] for row in rows),
            "training": training, "grid": rows[0]["grid"], "seeds": runs}


def seed_count(row: dict[str, Any]) -> int:
    return len(row.get("seeds", {})) or 1


# ------------------------------------------------------------------------------------------------ report
def loss_table(rows: dict[str, dict[str, Any]]) -> str:
    """Per sigma: mean +/- SE over images for one seed; the mean over seeds (min-max over seeds) for several."""
    headers = ["arm", *(f"sigma={s:g}" for s in SIGMAS), "EDM-weighted mean"]
    body = []
    for name, row in rows.items():
        if seed_count(row) > 1:
            cells = [f"{p['mse']:.4g} ({p['spread']['min']:.4g}-{p['spread']['max']:.4g})"
                     for p in row["heldout"]["per_sigma"]]
            s = row["heldout"]["edm_weighted_spread"]
            body.append([f"{name} ({seed_count(row)} seeds)", *cells,
                         f"{s['mean']:.4f} ({s['min']:.4f}-{s['max']:.4f})"])
        else:
            body.append([name, *(f"{p['mse']:.4f} +/- {p['se']:.4f}" for p in row["heldout"]["per_sigma"]),
                         f"{row['heldout']['edm_weighted_mean']:.4f}"])
    return markdown_table(headers, body)


def seed_table(rows: dict[str, dict[str, Any]]) -> str:
    """One row per arm and training seed: held-out error per sigma, its EDM-weighted mean, the Frechet distance."""
    body = [[name, str(seed), *(f"{p['mse']:.4g}" for p in run["heldout"]["per_sigma"]),
             f"{run['heldout']['edm_weighted_mean']:.4f}", f"{run['samples']['frechet']:.2f}"]
            for name, row in rows.items() for seed, run in row.get("seeds", {}).items()]
    return markdown_table(["arm", "seed", *(f"sigma={s:g}" for s in SIGMAS), "EDM-weighted mean", "Frechet"], body)


def sample_table(rows: dict[str, dict[str, Any]], floor: dict[str, Any], real: dict[str, float]) -> str:
    def frechet(row: dict[str, Any]) -> str:
        if seed_count(row) > 1:
            s = row["samples"]["frechet_spread"]
            return f"{s['mean']:.2f} ({s['min']:.2f}-{s['max']:.2f}, std {s['std']:.2f})"
        return f"{row['samples']['frechet']:.2f}"

    body = [[name, frechet(row),
             f"{row['samples']['accuracy'] * 100:.1f} +/- {row['samples']['accuracy_se'] * 100:.1f}",
             f"{row['samples']['mean_pixel']:+.2f}", f"{row['training'].get('seconds', 0):.0f}",
             f"{row['sampling_seconds']:.1f}"] for name, row in rows.items()]
    body.append(["real inverted digits", f"{real['mean']:.2f} +/- {real['std']:.2f}",
                 f"{floor['accuracy'] * 100:.1f}", f"{floor['mean_pixel']:+.2f}", "-", "-"])
    return markdown_table(["arm", "Frechet", "adherence %", "mean pixel", "training s", "sampling s"], body)


def beyond_seed_spread(best: dict[str, float], second: dict[str, float]) -> bool:
    """The two arms' min-max ranges over the training seeds do not overlap."""
    return best["max"] < second["min"]


def winners(rows: dict[str, dict[str, Any]], spread_std: float) -> list[str]:
    """Which arm has the lowest held-out error per sigma, overall (EDM-weighted mean) and in Frechet distance.

    One training seed: resolved when the runner-up's held-out error exceeds the best by more than twice the paired
    standard error (the same images and noise for every arm), and in Frechet distance when the gap exceeds twice the
    real-draw std. Several seeds: resolved when, in addition, the two arms' min-max ranges over the seeds do not
    overlap.
    """
    arms = [name for name in rows if name in ARMS]
    several = min(seed_count(rows[a]) for a in arms) > 1
    lines = []
    for k, sigma in enumerate(SIGMAS):
        ranked = sorted(arms, key=lambda a: rows[a]["heldout"]["per_sigma"][k]["mse"])
        best, second = (rows[a]["heldout"]["per_image"][k] for a in ranked[:2])
        difference = second - best
        gap, se = float(difference.mean()), float(difference.std() / math.sqrt(len(difference)))
        resolved = gap > 2 * se
        line = (f"sigma={sigma:g}: lowest held-out error {ranked[0]} ({float(best.mean()):.4g}; next {ranked[1]} "
                f"{float(second.mean()):.4g}, paired gap {gap:.4g} +/- {se:.2g})")
        if several:
            a, b = (rows[x]["heldout"]["per_sigma"][k]["spread"] for x in ranked[:2])
            line += f", seed ranges {a['min']:.4g}-{a['max']:.4g} vs {b['min']:.4g}-{b['max']:.4g}"
            resolved = resolved and beyond_seed_spread(a, b)
        lines.append(line + " -> " + ("resolved" if resolved else "not resolved" + ("" if several else
                                                                                     " (within 2 paired SE)")))
    def ranking(key: str, fmt: str) -> tuple[list[str], str]:
        ranked = sorted(arms, key=lambda a: key_value(rows[a], key))
        parts = []
        for a in ranked:
            text = format(key_value(rows[a], key), fmt)
            if several:
                s = key_spread(rows[a], key)
                text += f" ({format(s['min'], fmt)}-{format(s['max'], fmt)})"
            parts.append(f"{a} {text}")
        return ranked, " < ".join(parts)

    ranked, text = ranking("edm", ".4f")
    beyond = beyond_seed_spread(*(key_spread(rows[a], "edm") for a in ranked[:2]))
    lines.append("EDM-weighted mean over the sigmas: " + text
                 + (f" -> best vs next {'beyond' if beyond else 'within'} the seed spread" if several else ""))
    ranked, text = ranking("frechet", ".2f")
    gap = rows[ranked[1]]["samples"]["frechet"] - rows[ranked[0]]["samples"]["frechet"]
    resolved = gap > 2 * spread_std and (not several or beyond_seed_spread(*(key_spread(rows[a], "frechet")
                                                                               for a in ranked[:2])))
    lines.append(f"Frechet distance: {text} -> best vs next {'resolved' if resolved else 'not resolved'} "
                 f"(gap {gap:.2f}, real-draw std {spread_std:.2f}{', seed ranges compared' if several else ''})")
    return lines


def key_value(row: dict[str, Any], key: str) -> float:
    return row["heldout"]["edm_weighted_mean"] if key == "edm" else row["samples"]["frechet"]


def key_spread(row: dict[str, Any], key: str) -> dict[str, float]:
    return row["heldout"]["edm_weighted_spread"] if key == "edm" else row["samples"]["frechet_spread"]


def plot_results(rows: dict[str, dict[str, Any]], real: dict[str, float], path: Path, title: str) -> Path | None:
    """Held-out error per sigma (bars: min-max over the training seeds, or 2 SE over images for one seed) and the
    Frechet distance per arm (mean over seeds, bars min-max)."""
    plt = pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    colours = {BASE: "grey", "diffusers-eps": "tab:blue", "diffusers-edm-style": "tab:orange", "package-edm": "tab:green"}
    styles = {"diffusers-edm-style": "--"}
    several = any(seed_count(row) > 1 for row in rows.values())
    for name, row in rows.items():
        points = row["heldout"]["per_sigma"]
        if seed_count(row) > 1:
            yerr = [[p["mse"] - p["spread"]["min"] for p in points], [p["spread"]["max"] - p["mse"] for p in points]]
        else:
            yerr = [2 * p["se"] for p in points]
        axes[0].errorbar([p["sigma"] for p in points], [p["mse"] for p in points], yerr=yerr,
                         fmt="o" + styles.get(name, "-"), color=colours.get(name), capsize=2, label=name, markersize=4)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("sigma (held-out noise level)")
    axes[0].set_ylabel("held-out x0-MSE |D(y + sigma n; sigma) - y|^2\n"
                       + ("(mean over training seeds, bars: min-max)" if several else "(bars: 2 SE)"))
    axes[0].legend(fontsize=8)
    names = list(rows)
    means = [rows[n]["samples"]["frechet"] for n in names]
    ranges = [rows[n]["samples"]["frechet_spread"] if seed_count(rows[n]) > 1 else {"min": m, "max": m}
              for n, m in zip(names, means)]
    low, high = [m - r["min"] for m, r in zip(means, ranges)], [r["max"] - m for m, r in zip(means, ranges)]
    axes[1].bar(range(len(names)), means, yerr=[low, high], capsize=4, color=[colours.get(n, "black") for n in names])
    axes[1].axhspan(real["mean"] - real["std"], real["mean"] + real["std"], color="black", alpha=0.12,
                    label="real inverted digits, mean +/- std")
    axes[1].set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
    axes[1].set_ylabel("Frechet distance to held-out inverted digits"
                       + ("\n(mean, bars: min-max over seeds)" if several else ""))
    axes[1].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------ run
def evaluate(name: str, pipe: StableDiffusionPipeline, heldout: HeldOut, scorer: DigitScorer,
             settings: FinetuneSettings, training: dict[str, Any], output_dir: Path,
             write_grid: bool = True) -> dict[str, Any]:
    """Held-out errors, samples, their scores and (``write_grid``) grid for one arm and seed (or the base)."""
    errors = heldout_errors(pipe, heldout)
    images, labels, seconds = sample_prompts(pipe, settings)
    slug = "base" if name == BASE else name
    grid = None
    if write_grid:
        grid = str(budget_grid([(PROMPTS[d], images[labels == d]) for d in range(NUM_CLASSES)],
                               output_dir / f"finetune_comparison_grid_{slug}.png", settings.per_prompt))
    row = {"heldout": errors, "samples": sample_scores(images, labels, scorer), "sampling_seconds": seconds,
           "training": training, "grid": grid}
    seed = f" seed {training['seed']}" if "seed" in training else ""
    print(f"  {name}{seed}: EDM-weighted held-out error {errors['edm_weighted_mean']:.4f}, Frechet "
          f"{row['samples']['frechet']:.2f}", flush=True)
    return row


def base_on_its_own_prompts(pipe: StableDiffusionPipeline, data: ConceptData, scorer: DigitScorer,
                            settings: FinetuneSettings, output_dir: Path) -> dict[str, Any]:
    """Is the base a usable pretrained model? Its samples for "a handwritten 0" ... "9" (a pretraining caption),
    scored against the held-out *normal* digits in the same classifier's features, with the real-draw spread."""
    prompts = [digit_captions(d)[0] for d in range(NUM_CLASSES)]
    images, labels, _ = sample_prompts(pipe, settings, prompts)
    normal = DigitScorer(data.normal, scorer.classifier, scorer.heldout_accuracy,
                         FeatureFrechet(scorer.classifier, data.normal.heldout_images))
    grid = budget_grid([(prompts[d], images[labels == d]) for d in range(NUM_CLASSES)],
                       output_dir / "finetune_comparison_grid_base_normal_prompts.png", settings.per_prompt)
    spread = real_frechet_spread(normal.frechet, data.normal.train_images, data.normal.train_labels, len(labels))
    return {"prompts": prompts, "samples": sample_scores(images, labels, normal), "real_spread": spread,
            "grid": str(grid)}


def run_arm(name: str, base_dir: Path, data: ConceptData, work_dir: Path, settings: FinetuneSettings,
            device: torch.device, seed: int = SEED) -> tuple[StableDiffusionPipeline, dict[str, Any]]:
    if name == "package-edm":
        return finetune_with_package(base_dir, data, work_dir, settings, device, seed)
    return finetune_with_diffusers_recipe(base_dir, {"diffusers-eps": "epsilon", "diffusers-edm-style": "edm_style"}[name],
                                          data, settings, device, seed)


@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Build (or reuse) the base, fine-tune every arm, score held-out errors and samples; write tables, plot, grids."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None,
                        help=f"the cached base model and the package arm's run (default {DEFAULT_WORK_DIR}; --quick: "
                             "a temporary directory)")
    parser.add_argument("--train-seeds", default=str(SEED),
                        help="comma-separated training seeds; each arm is fine-tuned once per seed, the base, "
                             f"classifier, held-out noise and sample seeds fixed (default {SEED})")
    args = parser.parse_args(argv)
    try:
        train_seeds = parse_train_seeds(args.train_seeds)
    except ValueError as error:
        parser.error(str(error))
    device, output_dir = start_run(args)
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    data = load_concept_data()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="finetune_comparison_") as temporary:
        work_dir = Path(args.work_dir if args.work_dir is not None else temporary if args.quick else DEFAULT_WORK_DIR)
        base_dir = work_dir / "base"
        print("base model ...", flush=True)
        base = build_base(base_dir, data, settings, device)
        scorer = fit_concept_scorer(data, settings, device)
        base_pipe = load_pipe(base_dir, device)
        heldout = heldout_set(base_pipe, data, settings.heldout_count, device)
        rows[BASE] = evaluate(BASE, base_pipe, heldout, scorer, settings, {"base": base}, output_dir)
        base_check = base_on_its_own_prompts(base_pipe, data, scorer, settings, output_dir)
        for name in ARMS:
            runs = {}
            for seed in train_seeds:
                print(f"fine-tuning {name}, seed {seed} ({settings.finetune_steps} steps of batch "
                      f"{settings.finetune_batch}) ...", flush=True)
                pipe, training = run_arm(name, base_dir, data, work_dir, settings, device, seed)
                runs[seed] = evaluate(name, pipe, heldout, scorer, settings, training, output_dir,
                                      write_grid=seed == train_seeds[0])
            rows[name] = summarise_seeds(runs)
    count = NUM_CLASSES * settings.per_prompt
    real_index = scorer.real_in_label_order(count)
    real = scorer.split.train_images[real_index]
    floor = {**scorer.frechet.score(real, scorer.split.train_labels[real_index]), "mean_pixel": float(real.mean())}
    spread = real_frechet_spread(scorer.frechet, scorer.split.train_images, scorer.split.train_labels, count)
    lines = winners(rows, spread["std"])
    own = base_check["samples"]
    base_line = (f"Base model on its own pretraining prompts (\"a handwritten 0\" ... \"9\", same sampler and seeds): "
                 f"Frechet {own['frechet']:.2f} to the held-out normal digits (real normal digits "
                 f"{base_check['real_spread']['mean']:.2f} +/- {base_check['real_spread']['std']:.2f}), adherence "
                 f"{own['accuracy'] * 100:.1f}%, mean pixel {own['mean_pixel']:+.2f}.")
    for row in rows.values():  # per-image errors served the paired comparisons; the record keeps the summaries
        row["heldout"].pop("per_image")
        for run in row.get("seeds", {}).values():
            run["heldout"].pop("per_image")
    minutes = (time.perf_counter() - started) / 60

    setup = (f"Base: tiny StableDiffusionPipeline at 8x8 (VAE {settings.vae_steps} steps of batch {settings.vae_batch}; "
             f"UNet {settings.unet_channels} pretrained {settings.base_steps} steps of batch {settings.base_batch} at lr "
             f"{settings.base_learning_rate:g} with diffusers' eps recipe on the normal digits"
             f"{', reused from the cache' if base['reused'] else ''}). Fine-tuning on the inverted digits "
             f"(\"{INVERTED_CAPTION}\"): {settings.finetune_steps} steps of batch {settings.finetune_batch}, AdamW lr "
             f"{settings.finetune_learning_rate:g} (weight decay {WEIGHT_DECAY:g}, clip {MAX_GRAD_NORM:g}), no EMA, "
             f"training seeds {', '.join(map(str, train_seeds))} per arm (grids: seed {train_seeds[0]}). Held-out: "
             f"{len(heldout.latents)} inverted digits, one fixed noise draw per "
             f"sigma (latent sigma_data {heldout.sigma_data:.3f}). Samples: {count} per arm ({settings.per_prompt} per "
             f"prompt), EDMMultistepScheduler {settings.sample_steps} steps. Device {device}, {minutes:.1f} min.")
    losses = loss_table(rows)
    per_seed = seed_table(rows)
    samples = sample_table(rows, floor, spread)
    several = len(train_seeds) > 1
    note = (f"Held-out x0-MSE in latent space ("
            f"{'mean over the training seeds (min-max over seeds)' if several else '+/- SE over images'}); "
            f"the last column is the mean over the sigmas of "
            f"EDM's lambda(sigma) times it. Frechet: in the digit classifier's 64-d features (trained on normal and "
            f"inverted training digits; held-out accuracy on inverted digits {scorer.heldout_accuracy * 100:.1f}%), to "
            f"the held-out inverted digits; 'real inverted digits' = {count} real inverted training digits, mean +/- "
            f"std over {spread['draws']} class-balanced draws."
            + (" Frechet of an arm: mean over the training seeds (min-max, sample std)." if several else ""))
    print(f"\n{setup}\n\n{base_line}\n\n{losses}\n\n{per_seed}\n\n{samples}\n\n{note}\n\n" + "\n".join(lines))
    machine = machine_description(device)
    png = plot_results(rows, spread, output_dir / "finetune_comparison.png",
                       f"Fine-tuning on inverted digits, {settings.finetune_steps} steps x batch {settings.finetune_batch}")
    markdown_path = output_dir / "finetune_comparison.md"
    markdown_path.write_text(
        f"# Fine-tuning comparison ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device}, "
        f"{minutes:.1f} min)\n\n{setup}\n\n{base_line}\n\n## Held-out denoising error per noise level\n\n{losses}\n\n"
        f"## Per training seed\n\n{per_seed}\n\n## Samples\n\n"
        f"{samples}\n\n{note}\n\n## Readings\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n"
        f"Package command (arm package-edm, seed {train_seeds[0]}; the other seeds differ only in --seed):\n\n"
        f"```\n{rows['package-edm']['training']['command'].replace(REPOSITORY_PREFIX, '')}\n```\n"
    )
    result = {
        "settings": {**asdict(settings), "sigmas": SIGMAS, "prompts": PROMPTS, "seed": SEED, "train_seeds": train_seeds,
                     "sample_seed": SAMPLE_SEED,
                     "noise_seed": NOISE_SEED, "kl_weight": KL_WEIGHT, "sd_table": SD_TABLE},
        "machine": machine,
        "quick": args.quick,
        "arms": ARMS,
        "rows": rows,
        "base_on_own_prompts": base_check,
        "sigma_data": heldout.sigma_data,
        "classifier_accuracy_inverted": scorer.heldout_accuracy,
        "floor": {**floor, "spread": spread},
        "readings": lines,
        "minutes": minutes,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None,
                  "grids": {**{name: row["grid"] for name, row in rows.items()},
                            "base on its own prompts": base_check["grid"]}},
    }
    write_record(output_dir / "finetune_comparison.json", result)
    return result


if __name__ == "__main__":
    main()
