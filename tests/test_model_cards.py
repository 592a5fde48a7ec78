"""Model cards: one path for push_to_hub and training, and a usage example that runs as written.

The example's Python blocks are taken from the card, the repo id replaced by the local folder, and executed: for a
10-class model the labels must lie in 0..9 (a card that called ``pipe(class_labels=list(range(16)))`` raised).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from diffusers_edm import EDMHeunScheduler, EDMPipeline, LearnedVarianceDDPMScheduler, LearnedVariancePipeline
from diffusers_edm.models import EDMPrecond, VEPrecond
from diffusers_edm.pipelines import model_card as model_card_module
from tiny_backbones import tiny_dit, tiny_unet, tiny_vae
from tiny_training import tiny_args, write_tiny_config

REPO_ID = "someone/tiny-model"


def python_blocks(card: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", card, flags=re.S))


def run_usage_example(card: str, repo_id: str, folder: Path) -> tuple[str, list]:
    """Execute the card's Python code with ``repo_id`` replaced by ``folder``; return the code and its ``images``."""
    code = python_blocks(card)
    assert json.dumps(repo_id) in code
    code = code.replace(json.dumps(repo_id), repr(str(folder)))
    namespace: dict = {"__name__": "__model_card__"}
    exec(compile(code, "README.md", "exec"), namespace)
    return code, namespace["images"]


def ten_class_edm_pipeline() -> EDMPipeline:
    denoiser = EDMPrecond.from_backbone(tiny_unet(num_class_embeds=11), num_classes=10, null_class_label=10).eval()
    return EDMPipeline(denoiser, EDMHeunScheduler())


def test_edm_pipeline_card_example_runs_for_a_ten_class_model(tmp_path):
    pipe = ten_class_edm_pipeline()
    pipe.save_pretrained(tmp_path)
    card = str(pipe.model_card(REPO_ID, num_inference_steps=2, guidance_scale=1.5))
    assert "library_name: diffusers" in card and "- diffusers-edm" in card and "- edm-preconditioning" in card
    code, images = run_usage_example(card, REPO_ID, tmp_path)
    # Eight images of labels within 0..9, with the given guidance and steps.
    assert "class_labels=[0, 1, 2, 3, 4, 5, 6, 7]" in code and "guidance_scale=1.5" in code and "num_inference_steps=2" in code
    assert len(images) == 8 and all(isinstance(image, Image.Image) and image.size == (8, 8) for image in images)


def test_unconditional_latent_pipeline_card_example_runs(tmp_path):
    pipe = EDMPipeline(VEPrecond.from_backbone(tiny_unet(channels=4)).eval(), EDMHeunScheduler(), vae=tiny_vae().eval())
    pipe.save_pretrained(tmp_path)
    card = str(pipe.model_card(REPO_ID, num_inference_steps=2, guidance_scale=3.0))  # no guidance without classes
    code, images = run_usage_example(card, REPO_ID, tmp_path)
    assert "batch_size=4" in code and "guidance_scale" not in code and "class_labels" not in code
    assert len(images) == 4 and images[0].size == (16, 16)


@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_learned_variance_pipeline_card_example_runs(backbone, tmp_path):
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=40, beta_schedule="squaredcos_cap_v2")
    if backbone == "dit":  # 10 classes and DiT's null row; latents
        pipe = LearnedVariancePipeline(unet=tiny_dit(learned_variance=True), scheduler=scheduler, vae=tiny_vae())
    else:  # 3 classes and a null label in a 4-row table; pixels
        pipe = LearnedVariancePipeline(unet=tiny_unet(out_channels=6, num_class_embeds=4), scheduler=scheduler, null_class_label=3)
    pipe.save_pretrained(tmp_path)
    card = str(pipe.model_card(REPO_ID, guidance_scale=2.0))
    assert "- learned-variance-ddpm" in card
    code, images = run_usage_example(card, REPO_ID, tmp_path)
    classes = 10 if backbone == "dit" else 3
    assert f"class_labels={list(range(min(classes, 8)))}" in code and "guidance_scale=2.0" in code
    assert "num_inference_steps=40" in code  # 100 respaced steps, at most T = 40
    assert len(images) == min(classes, 8)


def test_push_to_hub_uploads_the_pipeline_card(tmp_path, monkeypatch):
    """push_to_hub writes the same card as model_card(repo_id): one path."""
    pipe = ten_class_edm_pipeline()
    uploaded = {}

    class Repo:
        repo_id = REPO_ID

    monkeypatch.setattr(model_card_module, "create_repo", lambda repo_id, **kwargs: Repo())
    monkeypatch.setattr(pipe, "_upload_folder", lambda folder, repo_id, **kwargs: uploaded.update(card=(Path(folder) / "README.md").read_text()))
    pipe.push_to_hub("tiny-model")
    assert uploaded["card"] == str(pipe.model_card(REPO_ID))


# ---------------------------------------------------------------------------------------------- training runs
def train_tiny(tmp_path: Path, *extra: str) -> Path:
    from diffusers_edm.training.train import main

    out = tmp_path / "run"
    main(tiny_args(out, write_tiny_config(tmp_path), "--max_train_steps", "2", "--checkpointing_steps", "100",
                   "--validation_steps", "100", "--label_column", "label", "--label_dropout", "0.1", *extra))
    return out


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_card_written_by_training_runs_with_the_runs_settings(tmp_path):
    out = train_tiny(tmp_path, "--guidance_scale", "2.0", "--sample_steps", "3")
    card = (out / "README.md").read_text()
    assert "- edm-preconditioning" in card and "2 optimizer steps" in card and "![samples](samples.png)" in card
    assert '"guidance_scale": 2.0' in card  # the training arguments
    code, images = run_usage_example(card, str(out), out)
    # The embedded digits have 10 classes: labels 0..7, the run's guidance scale and sample steps.
    assert "class_labels=[0, 1, 2, 3, 4, 5, 6, 7]" in code and "guidance_scale=2.0" in code and "num_inference_steps=3" in code
    assert len(images) == 8 and images[0].size == (8, 8)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_card_written_by_a_hybrid_training_run_runs(tmp_path):
    out = train_tiny(tmp_path, "--loss", "hybrid", "--num_train_timesteps", "50")
    card = (out / "README.md").read_text()
    assert "- learned-variance-ddpm" in card
    code, images = run_usage_example(card, str(out), out)
    assert "LearnedVariancePipeline.from_pretrained" in code and "num_inference_steps=50" in code
    assert len(images) == 8
