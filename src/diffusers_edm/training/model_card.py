"""The model card (README.md) of a training run's export: the pipeline's own card plus what the run adds, or the
card of a noise-conditional classifier.

Pipelines have one card path (:mod:`diffusers_edm.pipelines.model_card`): ``push_to_hub`` and training both render it,
so the usage example is generated from the saved model's config (labels within its classes, the run's guidance scale
and sample steps) and runs as written. A classifier is a model, not a pipeline: its card (same metadata conventions,
the same training record) is rendered here from the saved classifier's config, with its held-out accuracy per noise
level, and its example runs as written too.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..losses.finetuning import scale_consistent_P_mean
from ..models import NoiseConditionalClassifier
from ..pipelines import EDMPipeline, EDMTextToImagePipeline, LearnedVariancePipeline
from ..pipelines.model_card import TRAINING_SECTION, TrainingRecord

PIPELINE_CLASSES = {cls.__name__: cls for cls in (EDMPipeline, LearnedVariancePipeline)}
EMBEDDED_DATASET = "the embedded scikit-learn digits (8x8, upscaled)"


def training_record(args: argparse.Namespace, steps: int, grid_path: Path | None) -> TrainingRecord:
    """What the run adds to a card: steps, data set, arguments (without the Hub token) and the sample grid."""
    arguments = {key: value for key, value in sorted(vars(args).items()) if key != "hub_token"}
    return TrainingRecord(
        steps=steps,
        dataset=args.dataset_name or args.train_data_dir or EMBEDDED_DATASET,
        arguments=arguments,
        sample_grid=grid_path.name if grid_path is not None else None,
        datasets=[args.dataset_name] if args.dataset_name else None,
    )


def write_model_card(args: argparse.Namespace, output_dir: Path, grid_path: Path | None, steps: int) -> Path:
    """Write ``output_dir/README.md`` for the pipeline already saved in ``output_dir`` after ``steps`` optimizer steps.

    The card is the pipeline's :meth:`model_card` (library diffusers, tags including ``diffusers-edm``, a usage example
    with the run's ``--guidance_scale`` and ``--sample_steps``) with the training record: data set, arguments (without
    the Hub token) and the sample grid.
    """
    output_dir = Path(output_dir)
    class_name = json.loads((output_dir / "model_index.json").read_text())["_class_name"]
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(f"{output_dir} holds a {class_name}; expected one of {sorted(PIPELINE_CLASSES)}.")
    pipeline = PIPELINE_CLASSES[class_name].from_pretrained(output_dir)
    training = training_record(args, steps, grid_path)
    # A learned-variance model samples with its pipeline's default (100 respaced steps, at most T), as training does.
    sample_steps = None if isinstance(pipeline, LearnedVariancePipeline) else args.sample_steps
    card = pipeline.model_card(
        repo_id=args.hub_model_id or str(output_dir),
        num_inference_steps=sample_steps,
        guidance_scale=args.guidance_scale,
        training=training,
    )
    path = output_dir / "README.md"
    card.save(path)
    return path


#: Prompts in a text-to-image card's usage example (the first validation prompts).
TEXT_EXAMPLE_PROMPTS = 4


def write_text_model_card(args: argparse.Namespace, output_dir: Path, grid_path: Path | None, steps: int) -> Path:
    """Write ``output_dir/README.md`` for the ``EDMTextToImagePipeline`` already saved in ``output_dir``: its example
    prompts are the run's first validation prompts, with its ``--guidance_scale`` and ``--sample_steps``."""
    output_dir = Path(output_dir)
    pipeline = EDMTextToImagePipeline.from_pretrained(output_dir)
    card = pipeline.model_card(
        repo_id=args.hub_model_id or str(output_dir),
        num_inference_steps=args.sample_steps,
        guidance_scale=args.guidance_scale,
        training=training_record(args, steps, grid_path),
        prompts=list(args.validation_prompts[:TEXT_EXAMPLE_PROMPTS]),
    )
    path = output_dir / "README.md"
    card.save(path)
    return path


CLASSIFIER_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Held-out accuracy by noise level

{{ accuracy_table }}

## Usage

```python
import torch
from diffusers_edm import NoiseConditionalClassifier  # pip install diffusers-edm

classifier = NoiseConditionalClassifier.from_pretrained({{ repo_literal }}).eval()
# x = y + sigma * n: {{ data_description }}, noised at level sigma (here y = 0, for illustration)
sigma = torch.tensor({{ sigmas }})
x = sigma.reshape(-1, 1, 1, 1) * torch.randn({{ shape }}, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    probabilities = classifier(x, sigma).logits.softmax(dim=-1)

# Classifier guidance (Dhariwal & Nichol 2021) steers sampling by grad_x log p(y | x; sigma):
labels = torch.tensor({{ labels }})
x.requires_grad_(True)
log_p = classifier(x, sigma).logits.log_softmax(dim=-1)[torch.arange(len(labels)), labels].sum()
(gradient,) = torch.autograd.grad(log_p, x)
```

The classifier takes the noisy sample itself (not pre-scaled) and its noise level, and applies EDM's preconditioning
(`c_in = 1/sqrt(sigma^2 + sigma_data^2)`, `c_noise = ln(sigma)/4`) inside, like an EDM denoiser of the same data space.
A sampler uses it as `D + s * sigma^2 * grad_x log p(y | x; sigma)` (guidance scale `s`).
""" + TRAINING_SECTION


def classifier_model_card(
    classifier: NoiseConditionalClassifier, repo_id: str, accuracy: dict[str, Any], training: TrainingRecord | None = None
) -> ModelCard:
    """The card of a trained :class:`NoiseConditionalClassifier`: what it classifies, the held-out accuracy per noise
    level (as :meth:`ClassifierRecipe.bucket_accuracy` reports it) and a usage example that runs as written."""
    config = classifier.config
    height, width = classifier.sample_size
    channels = config.in_channels
    latent = training is not None and training.arguments.get("vae") is not None
    data_description = (
        f"{channels}-channel latents of the training VAE, {height}x{width}" if latent
        else f"{channels}-channel images in [-1, 1], {height}x{width}"
    )
    rows = ["| sigma | accuracy | noisy images |", "|---|---|---|"]
    rows += [f"| [{b['sigma_min']:g}, {b['sigma_max']:g}) | {b['accuracy']:.3f} | {b['count']} |" for b in accuracy["buckets"]]
    rows.append(f"| all | {accuracy['accuracy']:.3f} | {sum(b['count'] for b in accuracy['buckets'])} |")
    summary = (
        "A noise-conditional classifier p(y | x; sigma) for classifier guidance (Dhariwal & Nichol 2021), made with "
        "[diffusers-edm](https://pypi.org/project/diffusers-edm/): the encoder half of a diffusers UNet with "
        f"{config.pooling} pooling, {config.num_classes} classes, inputs {data_description}, conditioned on the noise "
        f"level with EDM's preconditioning (sigma_data {config.sigma_data:g}); trained on noise levels "
        f"{config.sigma_min:g} to {config.sigma_max:g}. The accuracy below is measured on {accuracy['num_images']} "
        f"held-out images, {accuracy['noise_draws']} noise draws per image and bucket, sigma log-uniform in each bucket."
    )
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-classification",
        tags=["diffusers", "diffusers-edm", "noise-conditional-classifier", "classifier-guidance", "edm-preconditioning"],
        datasets=training.datasets if training is not None else None,
    )
    labels = [label % config.num_classes for label in range(2)]
    return ModelCard.from_template(
        card_data,
        template_str=CLASSIFIER_CARD_TEMPLATE,
        title=repo_id.rstrip("/").split("/")[-1],
        summary=summary,
        accuracy_table="\n".join(rows),
        repo_literal=json.dumps(repo_id),
        data_description=data_description,
        sigmas="[0.1, 1.0]",
        shape=f"2, {channels}, {height}, {width}",
        labels=str(labels),
        training=training,
        training_arguments=json.dumps(training.arguments, indent=2, default=str) if training is not None else "",
    )


def write_classifier_model_card(args: argparse.Namespace, output_dir: Path, accuracy: dict[str, Any], steps: int) -> Path:
    """Write ``output_dir/README.md`` for the classifier already saved in ``output_dir`` after ``steps`` steps."""
    output_dir = Path(output_dir)
    classifier = NoiseConditionalClassifier.from_pretrained(output_dir)
    card = classifier_model_card(classifier, args.hub_model_id or str(output_dir), accuracy, training_record(args, steps, None))
    path = output_dir / "README.md"
    card.save(path)
    return path


FINETUNE_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Usage

{{ usage }}

## With diffusers-edm's samplers and guidance

The same model as an `EDMTextToImagePipeline` (diffusers-edm's samplers, classifier-free guidance and guidance
intervals){{ edm_note }}:

```python
from diffusers_edm import EDMTextToImagePipeline  # pip install diffusers-edm

edm_pipe = EDMTextToImagePipeline.from_stable_diffusion(pipe)
images = edm_pipe({{ prompts }}, num_inference_steps={{ steps }}, guidance_scale={{ guidance }}).images
```

## Training

Base model: `{{ base_model }}`. Recipe: {{ recipe }}

```sh
{{ command }}
```
"""


def write_finetune_model_card(args: argparse.Namespace, output_dir: Path, pipeline_class: str, steps: int) -> Path:
    """Write ``output_dir/README.md`` of a fine-tuning run (``--pretrained_model_name_or_path``): base model, recipe,
    the exact command and a usage example with stock diffusers (the exported folder, or ``load_lora_weights`` on the
    base model for a LoRA run) and with the package's ``EDMTextToImagePipeline``; the examples run as written."""
    import shlex

    output_dir = Path(output_dir)
    repo = args.hub_model_id or str(output_dir)
    base = args.pretrained_model_name_or_path
    lora = args.lora_rank is not None
    prompts = json.dumps(list(args.validation_prompts[:TEXT_EXAMPLE_PROMPTS]))
    load = (
        f"pipe = DiffusionPipeline.from_pretrained({json.dumps(base)})\npipe.load_lora_weights({json.dumps(repo)})"
        if lora else f"pipe = DiffusionPipeline.from_pretrained({json.dumps(repo)})"
    )
    usage = (
        ("LoRA weights for the base model, loaded with diffusers alone:\n\n" if lora else
         f"A {pipeline_class} folder that diffusers loads alone (its scheduler is set to the sampler diffusers-edm's "
         "benchmarks favour for it):\n\n")
        + "```python\nfrom diffusers import DiffusionPipeline\n\n" + load
        + f"\nimages = pipe({prompts}, num_inference_steps={args.sample_steps}).images\n```"
    )
    weighting = {"edm": "EDM's lambda = (sigma^2 + sd^2) / (sigma sd)^2", "uniform": "uniform weight",
                 "min-snr": "Min-SNR-5 weight"}[args.loss_weighting]
    # The recipe's default P_mean is EDM's moved to the run's sigma_data; say so when that is the value used.
    moved = math.isclose(args.P_mean, scale_consistent_P_mean(args.sigma_data), rel_tol=0, abs_tol=1e-9)
    recipe = (
        f"EDM's denoising loss (Karras et al. 2022) with ln(sigma) ~ N({args.P_mean:.4g}, {args.P_std:g}^2) truncated "
        f"to the model's noise range"
        + (" (P_mean = -1.2 + ln(sigma_data / 0.5): EDM's, tuned for sigma_data 0.5, moved to this data's scale)"
           if moved else "")
        + f", {weighting} (sigma_data {args.sigma_data:.4g}), caption dropout "
        f"{args.proportion_empty_prompts:g}, {steps} steps of batch {args.train_batch_size}, learning rate "
        f"{args.learning_rate:g}; "
    )
    if lora:
        recipe += f"LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g} on the UNet's to_k, to_q, to_v, to_out.0"
        recipe += " and the text encoder(s)' q_proj, k_proj, v_proj, out_proj." if args.train_text_encoder else "."
    else:
        recipe += "full fine-tuning of the UNet" + (" and the text encoder(s)." if args.train_text_encoder else ".")
    if not args.train_text_encoder:
        recipe += " The text encoder(s) stayed frozen."
    tags = ["text-to-image", "diffusers", "diffusers-edm", "edm"] + (["lora"] if lora else [])
    card = ModelCard.from_template(
        ModelCardData(library_name="diffusers", base_model=base, tags=tags),
        template_str=FINETUNE_CARD_TEMPLATE,
        title=repo.rstrip("/").split("/")[-1],
        summary=f"`{base}` fine-tuned with [diffusers-edm](https://pypi.org/project/diffusers-edm/)"
        + (" (LoRA)." if lora else "."),
        usage=usage,
        edm_note="" if lora else "; also saved whole in the `edm/` folder",
        prompts=prompts, steps=args.sample_steps, guidance=args.guidance_scale,
        base_model=base, recipe=recipe,
        command=shlex.join(["diffusers-edm-train", *getattr(args, "command_line", [])]),
    )
    path = output_dir / "README.md"
    card.save(path)
    return path
