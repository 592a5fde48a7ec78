"""``--channels_last``: the model's convolution weights and every input batch in channels-last (NHWC) memory format
during training, and the same training as without it up to float rounding (issue 18: the loader options keep working)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import diffusers_edm.training.train as train_module
from tiny_training import TINY_UNET, reset_accelerate_state, tiny_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def nhwc_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of an (N, C, H, W) tensor stored channels-last: C varies fastest, then W, then H, then N."""
    _, channels, height, width = shape
    return (height * width * channels, 1, width * channels, channels)


def nchw_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a contiguous (N, C, H, W) tensor: W varies fastest, then H, then C, then N."""
    _, channels, height, width = shape
    return (channels * height * width, height * width, width, 1)


def recorded_run(output_dir: Path, config: Path, *extra: str) -> tuple[dict, list[dict]]:
    """A 3-step run on 3-channel images (with one channel, NCHW and NHWC strides of a batch coincide), recording per
    step the strides of the batch the loss receives and of every 4-D (convolution) weight, and the weights before
    the first step."""
    steps: list[dict] = []
    original_loss = train_module.Trainer._loss

    def recording_loss(self, images, conditioning):
        weights = {name: (tuple(p.shape), p.stride()) for name, p in self.unwrapped_model().named_parameters() if p.dim() == 4}
        steps.append({"images": (tuple(images.shape), images.stride()), "weights": weights})
        if len(steps) == 1:
            steps[0]["initial"] = {name: p.detach().clone() for name, p in self.unwrapped_model().state_dict().items()}
        return original_loss(self, images, conditioning)

    train_module.Trainer._loss = recording_loss
    try:
        reset_accelerate_state()
        result = train_module.main(tiny_args(
            output_dir, config, "--num_channels", "3", "--max_train_steps", "3", "--lr_rampup_kimg", "0", *extra
        ))
    finally:
        train_module.Trainer._loss = original_loss
    return {name: tensor.detach().clone() for name, tensor in result.model.state_dict().items()}, steps


def test_channels_last_trains_in_nhwc_and_equals_the_default_run(tmp_path):
    # Without the mid-block attention: its key bias has no gradient in exact arithmetic (softmax ignores a shift
    # shared by a query's logits), so Adam would turn its rounding noise into +-lr steps in either layout.
    tiny_config = tmp_path / "unet.json"
    tiny_config.write_text(json.dumps({**TINY_UNET, "add_attention": False}))
    default, default_steps = recorded_run(tmp_path / "default", tiny_config)
    nhwc, nhwc_steps = recorded_run(tmp_path / "nhwc", tiny_config, "--channels_last")

    assert len(nhwc_steps) == len(default_steps) == 3
    for default_step, nhwc_step in zip(default_steps, nhwc_steps):
        shape, stride = nhwc_step["images"]
        assert stride == nhwc_strides(shape), "the input batch is not channels-last"
        assert default_step["images"][1] == nchw_strides(shape), "the default run's batch should stay NCHW"
        assert nhwc_step["weights"], "no convolution weight recorded"
        for name, (shape, stride) in nhwc_step["weights"].items():
            assert stride == nhwc_strides(shape), f"{name} is not channels-last during training"
            if shape[1] > 1 and shape[2] * shape[3] > 1:  # where the two layouts differ, the default keeps NCHW
                assert default_step["weights"][name][1] == nchw_strides(shape)

    # Same seed, same arithmetic in another memory order: equal up to float rounding (Adam's normalised steps carry
    # a gradient's rounding into the update, so the tolerance sits well below the 3 steps' movement of ~3e-3).
    initial = default_steps[0]["initial"]
    assert default.keys() == nhwc.keys() == initial.keys()
    moved = max((default[name] - initial[name]).abs().max().item() for name in default)
    assert moved > 1e-3, "training did not move the weights: the comparison below would be empty"
    for name in default:
        torch.testing.assert_close(nhwc[name], default[name], rtol=1e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")


def test_channels_last_is_refused_for_a_dit_by_name(tmp_path):
    from diffusers_edm.training.arguments import parse_args

    with pytest.raises(ValueError, match="--channels_last applies to convolutional backbones"):
        parse_args(["--output_dir", str(tmp_path / "out"), "--backbone", "dit", "--channels_last"])
