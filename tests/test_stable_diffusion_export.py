"""A fine-tuned UNet exported as a folder that stock diffusers loads (StableDiffusionPipeline / StableDiffusionXLPipeline)
with no import of diffusers_edm, sampling with a diffusers scheduler chosen for the checkpoint's formulation."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from diffusers_edm import pretrained_denoiser
from diffusers_edm.training.stable_diffusion_export import export_stable_diffusion
from tiny_stable_diffusion import make_tiny_edm_sdxl_pipeline, make_tiny_sd_pipeline, make_tiny_sdxl_base_pipeline

BUILDERS = {"sd1": make_tiny_sd_pipeline, "sdxl": make_tiny_sdxl_base_pipeline, "edm_sdxl": make_tiny_edm_sdxl_pipeline}

# Run with a plain interpreter: loads each folder with diffusers alone, generates, and reports what it loaded.
LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    torch.set_num_threads(1)
    report = {}
    for folder in sys.argv[1:]:
        pipe = DiffusionPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(["a red cube", "a tree"], num_inference_steps=4, height=16, width=16, guidance_scale=3.0,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
        report[folder] = {
            "pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
            "scheduler_config": {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")},
            "shape": list(images.shape), "finite": bool(np.isfinite(images).all()),
        }
    report["imported_diffusers_edm"] = any(name.split(".")[0] == "diffusers_edm" for name in sys.modules)
    print(json.dumps(report))
    """
)


def fine_tuned(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of the UNet with changed weights (standing in for a fine-tuning run)."""
    unet = copy.deepcopy(unet)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.01)
    return unet


def test_exports_load_in_stock_diffusers_without_the_package(tmp_path):
    folders, unets = {}, {}
    for kind, build in BUILDERS.items():
        base = build(tmp_path / f"base_{kind}")
        unets[kind] = fine_tuned(base.unet)
        # A package denoiser over the fine-tuned UNet exports its backbone (what a training run holds).
        model = pretrained_denoiser(unets[kind], base.scheduler) if kind == "sdxl" else unets[kind]
        folders[kind] = export_stable_diffusion(tmp_path / kind, base, model)
        assert not any(entry.name.startswith(".export") for entry in folders[kind].iterdir())  # staged, then renamed
        assert "diffusers_edm" not in (folders[kind] / "model_index.json").read_text()
        saved = load_file(folders[kind] / "unet" / "diffusion_pytorch_model.safetensors")
        state = unets[kind].state_dict()
        assert saved.keys() == state.keys() and all(torch.equal(saved[key], state[key]) for key in saved)

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, *map(str, folders.values())], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.pop("imported_diffusers_edm") is False
    loaded = {kind: report[str(folder)] for kind, folder in folders.items()}
    for kind, entry in loaded.items():
        assert entry["shape"] == [2, 16, 16, 3] and entry["finite"], (kind, entry)
    assert loaded["sd1"]["pipeline"] == "StableDiffusionPipeline"
    assert loaded["sdxl"]["pipeline"] == loaded["edm_sdxl"]["pipeline"] == "StableDiffusionXLPipeline"
    # Discrete VP tables: UniPC (bh2, order 3, exponential sigmas) over the checkpoint's own table.
    for kind in ("sd1", "sdxl"):
        config = loaded[kind]["scheduler_config"]
        assert loaded[kind]["scheduler"] == "UniPCMultistepScheduler"
        assert (config["beta_schedule"], config["beta_start"], config["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
        assert (config["solver_order"], config["solver_type"], config["use_exponential_sigmas"]) == (3, "bh2", True)
        assert config["prediction_type"] == "epsilon"
    # EDM formulation: EDMDPMSolverMultistepScheduler with the checkpoint's range and sigma_data.
    config = loaded["edm_sdxl"]["scheduler_config"]
    assert loaded["edm_sdxl"]["scheduler"] == "EDMDPMSolverMultistepScheduler"
    assert (config["sigma_min"], config["sigma_max"], config["sigma_data"], config["solver_order"]) == (0.002, 80.0, 0.5, 3)


def test_a_v_prediction_checkpoint_keeps_its_prediction_type(tmp_path):
    from tiny_stable_diffusion import make_tiny_sd2_pipeline

    from diffusers_edm.training.stable_diffusion_export import diffusers_scheduler_for

    base = make_tiny_sd2_pipeline(tmp_path)
    assert diffusers_scheduler_for(base.scheduler).config.prediction_type == "v_prediction"
    cosxl = make_tiny_edm_sdxl_pipeline(tmp_path / "cosxl", cosxl=True).scheduler
    scheduler = diffusers_scheduler_for(cosxl)
    assert (scheduler.config.prediction_type, scheduler.config.sigma_data, scheduler.config.sigma_max) == (
        "v_prediction", 1.0, 120.0)


def test_bad_exports_are_refused_by_name(tmp_path):
    from diffusers_edm import EDMHeunScheduler, EDMTextToImagePipeline

    base = make_tiny_sd_pipeline(tmp_path / "base")
    with pytest.raises(ValueError, match="EDMTextToImagePipeline"):
        export_stable_diffusion(tmp_path / "a", EDMTextToImagePipeline.from_stable_diffusion(base, EDMHeunScheduler()))
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler"):
        base.scheduler = FlowMatchEulerDiscreteScheduler()
        export_stable_diffusion(tmp_path / "b", base)
    base = make_tiny_sd_pipeline(tmp_path / "base2")
    with pytest.raises(ValueError, match="Linear"):
        export_stable_diffusion(tmp_path / "c", base, torch.nn.Linear(2, 2))
    from peft import LoraConfig

    unet = copy.deepcopy(base.unet)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with pytest.raises(ValueError, match="LoRA adapters.*merge"):
        export_stable_diffusion(tmp_path / "d", base, unet)
    assert all(not (tmp_path / name).exists() for name in "abcd")  # checked before anything is written
