"""Command-line arguments of the training script, and the checks that run before any training work."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from .checkpoints import list_checkpoints
from .data import EMBEDDED_DATASET
from .ema import MAX_SIGMA_REL, sigma_rel_to_gamma
from ..losses.weighting import LOSS_WEIGHTINGS
from ..option_types import integer, parse_or_raise, real, real_list
from ..pipelines.prompt_encoding import EMPTY_PROMPT_CONVENTIONS
from .posthoc_ema import snapshot_name
from .recipes import resolve_recipe_args
from .streaming import validate_streaming_args
from .recipes.classifier import DEFAULT_NOISE_DRAWS, DEFAULT_SIGMA_EDGES, DEFAULT_SIGMA_RANGE, DEFAULT_VALIDATION_SPLIT, POOLINGS
from .timestep_samplers import TIMESTEP_SAMPLERS

PRECONDITIONINGS = ("edm", "vp", "ve", "iddpm", "edm2")
EMA_TYPES = ("edm", "power")
DEFAULT_EMA_STDS = (0.05, 0.10)
TASKS = ("denoiser", "classifier")
LOSSES = ("precond", "hybrid")
LOSS_REDUCTIONS = ("sum", "mean")
BACKBONES = ("unet", "dit")
UNET_PRESETS = ("xs", "tiny", "small", "base")
DIT_PRESETS = ("tiny", "S/2", "B/2")
LOSS_WEIGHTING_NAMES = tuple(LOSS_WEIGHTINGS)
MAX_SEED = 2**32 - 1  # numpy's RandomState, seeded by accelerate's set_seed, takes no more

# The arguments that determine the trained weights: every checkpoint records them (``run_arguments.json``) and a
# resume with other values is refused. Not listed, so free to change on a resume: how long to train
# (--max_train_steps), how often to checkpoint / validate / log and what validation does, where logs and uploads go
# (--report_to, --push_to_hub, --hub_*), --dataloader_num_workers, --cache_dir, --compile, --channels_last,
# --overwrite and --cache_text_embeddings (the cached embeddings equal the uncached ones).
# The number of processes is recorded too (``num_processes``: the global batch).
RESULT_ARGUMENTS = (
    "task", "precond", "loss", "loss_reduction", "backbone", "model_size", "backbone_config", "sigma_data", "P_mean",
    "P_std", "num_train_timesteps", "beta_schedule", "timestep_sampler", "vae", "vae_subfolder",
    "validation_split", "classifier_sigma_min", "classifier_sigma_max", "classifier_pooling",
    "dataset_name", "dataset_config_name", "train_data_dir", "image_column", "num_channels", "label_column",
    "num_classes", "label_dropout", "caption_column", "text_encoder", "tokenizer", "proportion_empty_prompts",
    "empty_prompt", "resolution", "center_crop", "random_flip",
    "train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_rampup_kimg", "adam_beta1", "adam_beta2",
    "adam_epsilon", "weight_decay", "max_grad_norm", "mixed_precision", "seed", "streaming", "shuffle_buffer",
    "ema_type", "ema_halflife_kimg", "ema_rampup_ratio", "ema_stds", "ema_snapshot_kimg",
    "pretrained_model_name_or_path", "revision", "loss_weighting", "lora_rank", "lora_alpha", "train_text_encoder",
    "use_8bit_adam",
)
#: The --backbone / --model_size defaults of a run that builds its model (a fine-tuning run takes the checkpoint's).
DEFAULT_BACKBONE, DEFAULT_MODEL_SIZE, DEFAULT_SIGMA_DATA = "unet", "tiny", 0.5
NON_FINITE_HELP = (
    "Non-finite values: a numeric option that is not a finite number in its range is refused before any work. During "
    "training, a loss that becomes NaN/inf at any step is remembered on the device (no wait per step) and checked at "
    "the next logging, checkpointing, snapshot, validation or export step, together with the weights and their EMA: the "
    "run then stops with an error naming that step and the last good checkpoint, writes no checkpoint, snapshot or "
    "export of non-finite weights, and pushes nothing."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-edm-train",
        description="Train an EDM / VP / VE / iDDPM-preconditioned denoiser, a learned-variance DDPM (hybrid loss), or a "
        "noise-conditional classifier for classifier guidance (--task classifier), with Accelerate. Run it with "
        "`accelerate launch` for several processes or machines.",
        epilog=NON_FINITE_HELP,
        exit_on_error=False,
    )
    model = parser.add_argument_group("model and loss")
    model.add_argument("--task", choices=TASKS, default="denoiser",
                       help="'denoiser': a diffusion model (--precond / --loss); 'classifier': a NoiseConditionalClassifier "
                       "p(y | x; sigma) on noisy images for classifier guidance (needs --label_column; see 'classifier').")
    model.add_argument("--precond", choices=PRECONDITIONINGS, default=None,
                       help="Preconditioning and its matching loss (EDM, Karras et al. 2022, Table 1). 'edm2': EDM's "
                       "preconditioning with EDM2's learned-uncertainty loss lambda/exp(u) |D - y|^2 + u (Karras et al. "
                       "2024, eq. 21; u(sigma) is trained and checkpointed with the model but not exported). Default: edm.")
    model.add_argument("--loss", choices=LOSSES, default="precond",
                       help="'precond': the loss of --precond; 'hybrid': learned-variance DDPM, L_simple + 0.001 L_vlb.")
    model.add_argument("--loss_reduction", choices=LOSS_REDUCTIONS, default=None,
                       help="How a batch's per-element losses become one number. 'sum': summed over each image's "
                       "C*H*W elements (pixels, or latents with --vae) and averaged over the batch, EDM's "
                       "loss.sum() / batch; 'mean': averaged over every element, Improved DDPM's mean_flat. 'sum' gives "
                       "C*H*W times larger gradients, which matters for Adam's epsilon and for --max_grad_norm. "
                       "Default: sum for --loss precond (as EDM), mean for --loss hybrid (as Improved DDPM, whose "
                       "lambda = 0.001 and learning rates were set for per-dimension means); --task classifier averages "
                       "its cross-entropy over the batch (mean).")
    model.add_argument("--backbone", choices=BACKBONES, default=None,
                       help="diffusers UNet2DModel or DiTTransformer2DModel; with --caption_column their text-conditional "
                       "counterparts UNet2DConditionModel (Latent Diffusion) or PixArtTransformer2DModel (PixArt-alpha), "
                       "whose cross-attention reads the text encoder's hidden states.")
    model.add_argument("--model_size", default=None,
                       help=f"Backbone preset (default tiny): unet {UNET_PRESETS}, dit {DIT_PRESETS}; with --task classifier the encoder "
                       f"half of the unet preset {UNET_PRESETS}. A smaller preset (or fewer --max_train_steps) also makes "
                       "the weak model of autoguidance.")
    model.add_argument("--backbone_config", default=None,
                       help="JSON file with backbone config keys, applied over the preset (e.g. block_out_channels); with "
                       "--task classifier, NoiseConditionalClassifier config keys.")
    model.add_argument("--sigma_data", type=real(0, exclusive_minimum=True), default=None,
                       help="Standard deviation of the data (> 0). Default 0.5 (images in [-1, 1]); with "
                       "--pretrained_model_name_or_path, measured on the training latents at start-up.")
    model.add_argument("--P_mean", type=real(), default=None,
                       help="EDM / EDM2 loss (and --task classifier): mean of ln(sigma); default -1.2 (EDM), -0.4 with "
                       "--precond edm2 (EDM2). With --pretrained_model_name_or_path: -1.2 + ln(sigma_data / 0.5), "
                       "EDM's value (tuned for sigma_data 0.5) moved to the run's sigma_data, since EDM's loss is "
                       "stated in units of sigma_data (Karras et al. 2022, section 5). Lower it to train a classifier "
                       "more at low noise.")
    model.add_argument("--P_std", type=real(0, exclusive_minimum=True), default=None,
                       help="EDM / EDM2 loss (and --task classifier): std of ln(sigma); default 1.2 (EDM), 1.0 with "
                       "--precond edm2.")
    model.add_argument("--num_train_timesteps", type=integer(2), default=1000, help="Hybrid loss: diffusion steps T (>= 2).")
    model.add_argument("--beta_schedule", default="squaredcos_cap_v2", help="Hybrid loss: 'squaredcos_cap_v2' or 'linear'.")
    model.add_argument("--timestep_sampler", choices=TIMESTEP_SAMPLERS, default="uniform", help="Hybrid loss: t sampling.")
    model.add_argument("--vae", default=None, help="AutoencoderKL (local directory or Hub id): train in its latent space.")
    model.add_argument("--vae_subfolder", default=None, help="Subfolder of --vae holding the AutoencoderKL (e.g. 'vae').")

    classifier = parser.add_argument_group(
        "classifier",
        "--task classifier: cross-entropy of classifier(y + sigma n, sigma) against the labels, ln(sigma) ~ N(P_mean, "
        "P_std^2) clamped to [--classifier_sigma_min, --classifier_sigma_max]. To bias it towards low noise, lower "
        "--P_mean (e.g. -2) and/or --classifier_sigma_max (e.g. 5). Accuracy per noise-level bucket on a held-out split "
        "at every --validation_steps and at the end (logged, printed, accuracy/step-N.json and accuracy.json). The EMA "
        "classifier is saved into --output_dir: NoiseConditionalClassifier.from_pretrained(output_dir).",
    )
    classifier.add_argument("--validation_split", type=real(0, 1, exclusive_minimum=True, exclusive_maximum=True), default=None,
                            help=f"Held-out fraction, stratified by class and fixed by --seed (default {DEFAULT_VALIDATION_SPLIT}).")
    classifier.add_argument("--classifier_sigma_min", type=real(0, exclusive_minimum=True), default=None,
                            help=f"Smallest training noise level; smaller draws are clamped to it (default {DEFAULT_SIGMA_RANGE[0]}).")
    classifier.add_argument("--classifier_sigma_max", type=real(0, exclusive_minimum=True), default=None,
                            help=f"Largest training noise level; larger draws are clamped to it (default {DEFAULT_SIGMA_RANGE[1]}).")
    classifier.add_argument("--classifier_pooling", choices=POOLINGS, default=None,
                            help="Head: ADM's attention pooling (default) or global mean pooling.")
    classifier.add_argument("--validation_sigma_edges", type=real(0, exclusive_minimum=True), nargs="+", default=None,
                            help=f"Edges of the accuracy buckets on sigma (default {' '.join(f'{e:g}' for e in DEFAULT_SIGMA_EDGES)}).")
    classifier.add_argument("--validation_noise_draws", type=integer(1), default=None,
                            help=f"Noise draws per held-out image and bucket (default {DEFAULT_NOISE_DRAWS}).")

    finetune = parser.add_argument_group(
        "fine-tuning",
        "--pretrained_model_name_or_path: fine-tune a Stable Diffusion 1.x / 2.x or SDXL checkpoint (discrete VP table, "
        "eps or v) or an EDM-formulated one (Playground v2.5, CosXL) with EDM's loss: ln(sigma) ~ N(P_mean, P_std^2) "
        "truncated to the checkpoint's noise range, the weight of --loss_weighting, captions of --caption_column "
        "(default 'text') through the checkpoint's own text encoder(s) with caption dropout. The export is a folder that "
        "stock diffusers loads (StableDiffusionPipeline / StableDiffusionXLPipeline), the same model as an "
        "EDMTextToImagePipeline in OUTPUT_DIR/edm, or with --lora_rank the LoRA weights that load_lora_weights reads.",
    )
    finetune.add_argument("--pretrained_model_name_or_path", default=None,
                          help="A diffusers StableDiffusionPipeline / StableDiffusionXLPipeline folder or Hub id. Its "
                          "UNet, VAE, text encoder(s), tokenizer(s) and noise table are used; --backbone, --model_size, "
                          "--backbone_config, --precond, --text_encoder and --tokenizer do not apply.")
    finetune.add_argument("--revision", default=None, help="Hub revision of --pretrained_model_name_or_path.")
    finetune.add_argument("--loss_weighting", choices=LOSS_WEIGHTING_NAMES, default=None,
                          help="lambda(sigma) on |D - y|^2: 'edm' (sigma^2 + sd^2)/(sigma sd)^2 (default), 'uniform' 1, "
                          "'min-snr' min(1/sigma^2, 5) (Min-SNR-5's eps weight min(SNR, 5)/SNR).")
    finetune.add_argument("--lora_rank", type=integer(1), default=None,
                          help="Train LoRA adapters of this rank (>= 1, at most the adapted layers' width) on the UNet's "
                          "attention projections to_k, to_q, to_v, to_out.0 (peft; pip install 'diffusers-edm[lora]') "
                          "instead of every weight.")
    finetune.add_argument("--lora_alpha", type=real(0, exclusive_minimum=True), default=None,
                          help="LoRA scaling alpha (> 0; the update is alpha/rank * B A). Default: --lora_rank.")
    finetune.add_argument("--train_text_encoder", action="store_true", default=None,
                          help="Train the text encoder(s) (SDXL: both) with the UNet, float32 master weights: every "
                          "weight, or with --lora_rank LoRA adapters on their q_proj, k_proj, v_proj, out_proj (as "
                          "diffusers' DreamBooth LoRA scripts). Exported with the UNet. Not with "
                          "--cache_text_embeddings. Default: frozen.")
    finetune.add_argument("--gradient_checkpointing", action="store_true", default=None,
                          help="Recompute the UNet's activations in the backward pass (less memory, slower).")
    finetune.add_argument("--use_8bit_adam", action="store_true", default=None,
                          help="bitsandbytes' 8-bit AdamW (pip install 'diffusers-edm[bnb]').")
    finetune.add_argument("--cache_latents", action="store_true", default=None,
                          help="Encode every training image with the VAE once, at start-up (its posterior, sampled "
                          "anew every step). Needs --center_crop and no --random_flip.")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None,
                      help=f"A `datasets` name or local path. Default (no data argument): the embedded '{EMBEDDED_DATASET}'.")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_data_dir", default=None, help="An image folder (loaded with datasets' imagefolder).")
    data.add_argument("--image_column", default="image")
    data.add_argument("--num_channels", type=integer(1, 3), choices=(1, 3), default=None,
                      help="Convert every image to grayscale (1) or RGB (3). Default: RGB if any image is in colour, "
                      "else grayscale (read from the image headers).")
    data.add_argument("--label_column", default=None,
                      help="Class-label column: trains a class-conditional model (the classes of --task classifier).")
    data.add_argument("--num_classes", type=integer(1), default=None, help="Number of classes (default: read from the labels).")
    data.add_argument("--label_dropout", type=real(0, 1, exclusive_maximum=True), default=0.0,
                      help="Label dropout for classifier-free guidance, in [0, 1) (e.g. 0.1).")
    data.add_argument("--resolution", type=integer(1), default=16, help="Image resolution in pixels (>= 1).")

    text = parser.add_argument_group(
        "text",
        "--caption_column: a text-to-image model (GLIDE / Latent Diffusion / PixArt-alpha) exported as an "
        "EDMTextToImagePipeline. Each step draws one caption per example from its own (a string or a list of strings), "
        "replaces it by the empty prompt with probability --proportion_empty_prompts (drawn anew every step), and "
        "conditions the backbone's cross-attention on the frozen text encoder's hidden states. Without --text_encoder "
        "a small CLIP tokenizer and text encoder are built locally from the captions' words (--seed; no download), and "
        "saved with the pipeline; a real run names a pretrained one, e.g. --text_encoder openai/clip-vit-large-patch14 "
        "(or a T5 encoder).",
    )
    text.add_argument("--caption_column", default=None,
                      help="Caption column (strings or lists of strings): trains a text-conditional model (the "
                      "embedded digits have 'text').")
    text.add_argument("--text_encoder", default=None,
                      help="A transformers CLIPTextModel or T5EncoderModel (local directory or Hub id), chosen by its "
                      "config; frozen, in the training dtype. Default: a small local CLIP text encoder.")
    text.add_argument("--tokenizer", default=None, help="Its tokenizer (default: the --text_encoder location).")
    text.add_argument("--proportion_empty_prompts", type=real(0, 1, exclusive_maximum=True), default=None,
                      help="Caption dropout for classifier-free guidance, in [0, 1): each example's caption becomes the "
                      "empty prompt with this probability, drawn anew at every step (default 0.1).")
    text.add_argument("--empty_prompt", choices=EMPTY_PROMPT_CONVENTIONS, default=None,
                      help="The empty prompt of caption dropout and of the pipeline's unconditional half: 'encode' "
                      "(\"\" through the text encoder, Stable Diffusion 1.x/2.x; default) or 'zeros' (all-zero "
                      "embeddings, SDXL's force_zeros_for_empty_prompt). Recorded in the exported pipeline.")
    text.add_argument("--cache_text_embeddings", action="store_true", default=None,
                      help="Keep each caption's embeddings after its first encoding (the dropout is still drawn per "
                      "step; the same result as without).")
    text.add_argument("--validation_prompts", nargs="+", default=None,
                      help="Prompts of the validation and final grids (one row per prompt, one column per seed). "
                      "Default: the first caption of each row of the data, distinct, at most 10.")
    data.add_argument("--center_crop", action=argparse.BooleanOptionalAction, default=True)
    data.add_argument("--random_flip", action="store_true", help="Random horizontal flips (not for digits!).")
    data.add_argument("--dataloader_num_workers", type=integer(0), default=0,
                      help="Loader worker processes that read and decode images (with --streaming: at most the "
                      "number of shards each process reads).")
    data.add_argument("--streaming", action="store_true",
                      help="Read --dataset_name (a Hub id, or a folder of parquet files or WebDataset .tar shards) or "
                      "--train_data_dir as a stream while training (datasets' streaming mode), split between processes; "
                      "checkpoints hold each process's stream position (see README, 'Streaming data'). Needs "
                      "--num_channels unless the image feature declares a mode, --num_classes unless the labels are a "
                      "ClassLabel.")
    data.add_argument("--shuffle_buffer", type=integer(1), default=None,
                      help="--streaming: shuffle through a buffer of N examples (>= 1), seeded by --seed and reseeded "
                      "every epoch. Default: no shuffling (the shards' order).")
    data.add_argument("--cache_dir", default=None)

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--train_batch_size", type=integer(1), default=64, help="Batch size per process (>= 1).")
    optim.add_argument("--max_train_steps", type=integer(1), default=2000, help="Optimizer steps (>= 1).")
    optim.add_argument("--gradient_accumulation_steps", type=integer(1), default=1)
    optim.add_argument("--learning_rate", type=real(0, exclusive_minimum=True), default=1e-3, help="Peak learning rate (> 0).")
    optim.add_argument("--lr_rampup_kimg", type=real(0), default=10.0,
                       help="EDM's linear learning-rate ramp: each step uses lr * min(n / (lr_rampup_kimg * 1000), 1), "
                       "n = images seen before the step, as in EDM (so the first step has lr 0, even with 0, which otherwise "
                       "means no ramp).")
    optim.add_argument("--adam_beta1", type=real(0, 1, exclusive_maximum=True), default=0.9, help="In [0, 1).")
    optim.add_argument("--adam_beta2", type=real(0, 1, exclusive_maximum=True), default=0.999, help="In [0, 1).")
    optim.add_argument("--adam_epsilon", type=real(0, exclusive_minimum=True), default=1e-8, help="> 0.")
    optim.add_argument("--weight_decay", type=real(0), default=0.0, help=">= 0.")
    optim.add_argument("--max_grad_norm", type=real(0, exclusive_minimum=True, allowed="> 0 and finite (or left out: no clipping)"),
                       default=None,
                       help="Clip the global L2 norm of the gradient of the reduced loss to this (after NaN/inf "
                       "replacement); the norm before clipping is logged as grad_norm. Its scale follows "
                       "--loss_reduction: with 'sum' the gradient is C*H*W times the one of 'mean' (256 for 16x16 "
                       "grayscale, 3072 for 32x32 RGB), so a threshold tuned for 'mean' is multiplied by C*H*W.")
    optim.add_argument("--ema_type", choices=EMA_TYPES, default="edm",
                       help="'edm': EDM's EMA with a half-life in images (--ema_halflife_kimg, --ema_rampup_ratio). 'power': "
                       "EDM2's power-function EMAs, one per --ema_stds, with snapshots every --ema_snapshot_kimg under "
                       "OUTPUT_DIR/ema_snapshots/ from which diffusers-edm-posthoc-ema reconstructs the EMA of any std after "
                       "training; validation grids and the exported pipeline use the first std's EMA.")
    optim.add_argument("--ema_halflife_kimg", type=real(0), default=500.0, help="--ema_type edm: half-life in kimg (>= 0).")
    optim.add_argument("--ema_rampup_ratio", type=real(), default=0.05, help="--ema_type edm: <= 0 disables the ramp.")
    optim.add_argument("--ema_stds", type=real_list(0, exclusive_minimum=True), default=None,
                       help=f"--ema_type power: relative stds of the tracked EMA profiles, comma-separated, each in "
                       f"(0, {MAX_SIGMA_REL:.4f}) (default {','.join(f'{s:.2f}' for s in DEFAULT_EMA_STDS)}, as EDM2).")
    optim.add_argument("--ema_snapshot_kimg", type=real(0, exclusive_minimum=True), default=None,
                       help="--ema_type power: write a snapshot of every tracked EMA each time the images seen reach a "
                       "multiple of this many thousand images (fractions allowed; rounded to whole images). Default: "
                       "every --checkpointing_steps steps.")
    optim.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                       help="Default: what `accelerate config` says (no).")
    optim.add_argument("--compile", action="store_true", help="torch.compile the model (Accelerate's dynamo backend).")
    optim.add_argument("--channels_last", action="store_true",
                       help="Keep the model's convolution weights and each input batch in channels-last memory format "
                       "(faster convolutions on GPUs with tensor cores; the numbers equal the default's to float "
                       "tolerance). Convolutional backbones only (not --backbone dit).")
    optim.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                       help=f"Seed of every random number generator, in [0, {MAX_SEED}] (numpy's range).")

    output = parser.add_argument_group("output, checkpoints, logging")
    output.add_argument("--output_dir", required=True, help="Where the final pipeline, checkpoints, samples and logs go.")
    output.add_argument("--overwrite", action="store_true",
                        help="Replace the run that --output_dir holds: its checkpoints, EMA snapshots, logs, sample "
                        "grids and exported pipeline are deleted (only these entries, when the folder holds a "
                        "training_args.json of this script; other files are kept) before the new run writes anything. "
                        "Cannot be combined with --resume_from_checkpoint of a checkpoint in --output_dir.")
    output.add_argument("--checkpointing_steps", type=integer(1), default=500)
    output.add_argument("--checkpoints_total_limit", type=integer(1), default=None, help="Keep the newest N checkpoints (>= 1).")
    output.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint directory.")
    output.add_argument("--preemption_check_steps", type=integer(1), default=10,
                        help="On SIGTERM / SIGUSR1 the run checkpoints and exits with 128 + the signal's number. With "
                             "several processes they agree on the step every N optimizer steps (a host "
                             "synchronisation), so up to N steps may pass between the signal and the checkpoint; one "
                             "process stops after the current step.")
    output.add_argument("--report_to", default="tensorboard", help="Accelerate tracker(s), comma-separated, or 'none'.")
    output.add_argument("--logging_steps", type=integer(1), default=10,
                        help="Log the loss every N steps; the loss and weights are also checked for NaN/inf then (see --help's epilog).")
    output.add_argument("--validation_steps", type=integer(1), default=500,
                        help="Every N steps, validate the EMA model: a sample grid (denoisers) or the held-out accuracy "
                        "per noise level (--task classifier).")
    output.add_argument("--num_validation_images", type=integer(1), default=16)
    output.add_argument("--sample_steps", type=integer(1), default=18, help="EDMHeunScheduler steps for validation/final grids.")
    output.add_argument("--guidance_scale", type=real(), default=1.0, help="Guidance for the sample grids.")
    output.add_argument("--push_to_hub", action="store_true")
    output.add_argument("--hub_model_id", default=None)
    output.add_argument("--hub_token", default=None)
    output.add_argument("--hub_private_repo", action="store_true")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parse_or_raise(build_parser(), argv)
    if args.pretrained_model_name_or_path is not None:  # the exact command, for the fine-tuning model card
        args.command_line = command_line(sys.argv[1:] if argv is None else argv)
    validate_args(args)
    return args


def command_line(argv: list[str]) -> list[str]:
    """The command's arguments as given (for the model card of a fine-tuning run), the Hub token's value hidden."""
    hidden, hide_next = [], False
    for argument in argv:
        if hide_next:
            argument, hide_next = "HUB_TOKEN", False
        elif argument == "--hub_token":
            hide_next = True
        elif argument.startswith("--hub_token="):
            argument = "--hub_token=HUB_TOKEN"
        hidden.append(argument)
    return hidden


def validate_args(args: argparse.Namespace) -> None:
    """Reject bad combinations with a clear message before any data, model or process work."""
    if args.pretrained_model_name_or_path is None:
        args.backbone = args.backbone or DEFAULT_BACKBONE
        args.model_size = args.model_size or DEFAULT_MODEL_SIZE
        args.sigma_data = DEFAULT_SIGMA_DATA if args.sigma_data is None else args.sigma_data
    resolve_recipe_args(args)
    validate_ema_args(args)
    validate_streaming_args(args)
    if args.channels_last and args.backbone == "dit":
        raise ValueError(
            "--channels_last applies to convolutional backbones (--backbone unet): a DiT is a transformer whose one "
            "convolution (the patch embedding) gains nothing from it. Drop --channels_last."
        )
    if args.pretrained_model_name_or_path is not None:
        validate_output_args(args)
        return
    presets = UNET_PRESETS if args.backbone == "unet" else DIT_PRESETS
    if args.model_size not in presets:
        raise ValueError(f"--model_size {args.model_size!r} is not a {args.backbone} preset; choose one of {presets}.")
    validate_output_args(args)


def validate_output_args(args: argparse.Namespace) -> None:
    """The checks of the data, guidance, Hub and output options that every recipe shares."""
    if args.backbone_config is not None and not Path(args.backbone_config).is_file():
        raise ValueError(f"--backbone_config {args.backbone_config!r} is not a file.")
    if args.backbone_config is not None:
        try:
            json.loads(Path(args.backbone_config).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"--backbone_config {args.backbone_config!r} is not valid JSON: {error}") from error
    if args.beta_schedule not in ("squaredcos_cap_v2", "linear"):
        raise ValueError(f"--beta_schedule must be 'squaredcos_cap_v2' or 'linear', got {args.beta_schedule!r}.")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("Pass at most one of --dataset_name and --train_data_dir.")
    if args.train_data_dir is not None and not Path(args.train_data_dir).is_dir():
        raise ValueError(f"--train_data_dir {args.train_data_dir!r} is not a directory.")
    if args.label_dropout > 0 and args.label_column is None:
        raise ValueError("--label_dropout needs --label_column (it drops class labels).")
    if args.caption_column is not None and args.label_column is not None:
        raise ValueError(
            f"--caption_column {args.caption_column!r} and --label_column {args.label_column!r}: a model is conditioned "
            "on text or on class labels; pass one of them."
        )
    if args.caption_column is not None:
        if args.guidance_scale != 1.0 and args.proportion_empty_prompts == 0:
            raise ValueError("--guidance_scale != 1 needs a model trained with --proportion_empty_prompts > 0 (the empty prompt).")
    elif args.guidance_scale != 1.0 and args.label_dropout == 0:
        raise ValueError("--guidance_scale != 1 needs a model trained with --label_dropout > 0 (a null label).")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. 'your-name/edm-digits').")
    if args.resume_from_checkpoint not in (None, "latest") and not Path(args.resume_from_checkpoint).is_dir():
        raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is neither 'latest' nor a directory.")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {str(output_dir)!r} exists and is not a directory.")
    holds_run = output_dir.is_dir() and any(
        (output_dir / name).exists() for name in ("model_index.json", "training_args.json")
    )
    # Only a resume from one of output_dir's own checkpoints continues the run that is there; anything else replaces it.
    if args.resume_from_checkpoint == "latest":
        continues_run = bool(list_checkpoints(output_dir))
    else:
        continues_run = args.resume_from_checkpoint is not None and (
            Path(args.resume_from_checkpoint).resolve().parent == output_dir.resolve()
        )
    if args.overwrite and args.resume_from_checkpoint is not None and (
        args.resume_from_checkpoint == "latest" or Path(args.resume_from_checkpoint).resolve().parent == output_dir.resolve()
    ):
        raise ValueError(
            f"--overwrite deletes the run in --output_dir {str(output_dir)!r}, --resume_from_checkpoint "
            f"{args.resume_from_checkpoint!r} continues it: pass only one of them."
        )
    if holds_run and not args.overwrite and not continues_run:
        if args.resume_from_checkpoint is None:
            reason = ""
        elif args.resume_from_checkpoint == "latest":
            reason = " and no checkpoint to resume (--resume_from_checkpoint latest found none)"
        else:
            reason = f" and --resume_from_checkpoint {args.resume_from_checkpoint!r} is not one of its checkpoints"
        raise ValueError(
            f"--output_dir {str(output_dir)!r} holds another run{reason}; pass --overwrite to replace it or "
            "--resume_from_checkpoint latest to continue it from its last checkpoint."
        )
    args.report_to = None if args.report_to in ("none", "", None) else args.report_to.split(",")


def validate_ema_args(args: argparse.Namespace) -> None:
    """``--ema_type power``: the stds (default EDM2's 0.05, 0.10) and the snapshot interval; refuse them otherwise."""
    if args.ema_type != "power":
        for name in ("ema_stds", "ema_snapshot_kimg"):
            if getattr(args, name) is not None:
                raise ValueError(f"--{name} applies to --ema_type power only; drop it or pass --ema_type power.")
        return
    if args.task == "classifier":
        raise ValueError("--ema_type power reconstructs pipelines after training; --task classifier keeps --ema_type edm.")
    args.ema_stds = list(DEFAULT_EMA_STDS) if args.ema_stds is None else args.ema_stds
    if not args.ema_stds:
        raise ValueError("--ema_stds needs at least one relative std, e.g. 0.05,0.10.")
    for std in args.ema_stds:
        try:
            sigma_rel_to_gamma(std)
        except ValueError as error:
            raise ValueError(f"--ema_stds: {error}") from None
    names = [snapshot_name(std, 0) for std in args.ema_stds]
    if len(set(names)) != len(names):
        raise ValueError(f"--ema_stds {args.ema_stds} must differ at 3 decimals (they name the snapshot files).")
    if args.ema_snapshot_kimg is not None and not (
        math.isfinite(args.ema_snapshot_kimg) and round(args.ema_snapshot_kimg * 1000) >= 1
    ):
        raise ValueError(f"--ema_snapshot_kimg must be finite and at least 0.001 (one image), got {args.ema_snapshot_kimg}.")


def result_arguments(args: argparse.Namespace, num_processes: int) -> dict[str, Any]:
    """The values of :data:`RESULT_ARGUMENTS` (and ``num_processes``) as JSON values, recorded in every checkpoint.

    ``--backbone_config`` is recorded by its content (the file may move); a local path (data, VAE) as its absolute
    path, so that a resume from another working directory compares the same folder.
    """
    values: dict[str, Any] = {}
    for name in RESULT_ARGUMENTS:
        value = getattr(args, name, None)
        if name == "backbone_config" and value is not None:
            value = json.loads(Path(value).read_text())
        elif name in ("dataset_name", "train_data_dir", "vae", "text_encoder", "tokenizer") and value is not None and Path(value).exists():
            value = str(Path(value).resolve())
        values[name] = value
    values["num_processes"] = int(num_processes)
    # A JSON round trip: what is compared on resume is what a checkpoint can hold (tuples become lists).
    return json.loads(json.dumps(values))


def save_args(args: argparse.Namespace, output_dir: str | os.PathLike) -> None:
    """Record the run's arguments (``training_args.json``) for the model card and for later resumes."""
    values = {k: v for k, v in vars(args).items() if k != "hub_token"}
    Path(output_dir, "training_args.json").write_text(json.dumps(values, indent=2, sort_keys=True))
