"""``--backbone dit`` without ``--vae``: a class-conditional DiT (Peebles & Xie 2023) patchifies whatever it is given,
pixels as well as latents, so the command trains it on the images themselves and exports a pipeline without a VAE."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffusers_edm.training.train import main
from tiny_training import tiny_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_a_class_conditional_dit_trains_on_pixels_and_exports_a_pipeline_without_a_vae(tmp_path):
    from diffusers_edm import EDMPipeline

    dit = tmp_path / "dit.json"
    dit.write_text(json.dumps({"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8}))
    out = tmp_path / "run"
    result = main(tiny_args(out, dit, "--backbone", "dit", "--label_column", "label", "--max_train_steps", "2",
                            "--checkpointing_steps", "2", "--validation_steps", "1000"))
    backbone = result.model.config.backbone_config
    # the digits' own 8x8 grey pixels, 2x2 patches: 16 tokens of 1 channel
    assert backbone["in_channels"] == 1 and backbone["sample_size"] == 8 and backbone["patch_size"] == 2
    assert type(result.model.backbone).__name__ == "DiTTransformer2DModel"
    pipe = EDMPipeline.from_pretrained(out)
    assert pipe.vae is None
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 5], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
