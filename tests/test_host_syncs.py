"""No host synchronisation in the hot paths: a denoiser forward and every model call of an EDMPipeline sampling loop.

Values are validated once per pipeline call (labels, noise range); the iDDPM table is a device buffer. The counter
(tests/host_sync_counter.py) patches the calls that make the host wait for an accelerator; on this CPU-only
machine it counts what a GPU run would wait on.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from accelerate import cpu_offload, cpu_offload_with_hook, init_empty_weights
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from diffusers_edm import EDMHeunScheduler, EDMPipeline, EDMTextToImagePipeline
from diffusers_edm.models import EDMPrecond, IDDPMPrecond, VEPrecond, VPPrecond
from benchmarks.host_syncs import count_host_syncs
from test_models_preconditioning import reference_iddpm_table
from tiny_backbones import tiny_dit, tiny_unet, tiny_unet_condition
from tiny_text_encoders import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_pixart, tiny_text_unet

WRAPPERS = [EDMPrecond, VPPrecond, VEPrecond, IDDPMPrecond]
U = torch.tensor(reference_iddpm_table(), dtype=torch.float64)


def test_the_counter_sees_every_kind_of_host_synchronisation():
    t, originals = torch.ones(3), (torch.Tensor.item, torch.Tensor.__bool__, torch.cuda.synchronize)
    with count_host_syncs() as syncs:
        bool(t[0]), t.sum().item(), t.tolist(), float(t[0]), int(t[0]), [0, 1][t[0].long()], t.cpu(), t.numpy()
        t.nonzero()  # data-dependent output size
        _ = t * 2 + t.exp()  # device-side arithmetic: not a synchronisation
        if t[1] > 0:
            pass
        try:
            torch.cuda.synchronize()
        except (AssertionError, RuntimeError):  # a build or machine without CUDA: the call is still counted
            pass
    names = [call.name for call in syncs.calls]
    assert names == ["Tensor.__bool__", "Tensor.item", "Tensor.tolist", "Tensor.__float__", "Tensor.__int__",
                     "Tensor.__index__", "Tensor.cpu", "Tensor.numpy", "Tensor.nonzero", "Tensor.__bool__",
                     "torch.cuda.synchronize"]
    assert syncs.count == 11 and len(syncs.calls_from("test_host_syncs.py")) == 11
    assert (torch.Tensor.item, torch.Tensor.__bool__, torch.cuda.synchronize) == originals  # patches removed on exit


def test_the_counter_ignores_the_optimizers_host_step_counter():
    """PyTorch keeps a plain optimizer's step count on the host by design: reading it is no device wait."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(3)
    with count_host_syncs() as syncs:
        optimizer.step()
    assert syncs.count == 0, syncs.calls


BACKBONES = {
    "unet": lambda: (tiny_unet(num_class_embeds=6), dict(num_classes=5, null_class_label=5), {}),
    "unet_condition": lambda: (tiny_unet_condition(), {}, {"encoder_hidden_states": torch.randn(2, 3, 8)}),
    "dit": lambda: (tiny_dit(learned_variance=True), {}, {}),
    "pixart": lambda: (tiny_pixart(additional_conditions=True), {}, {"encoder_hidden_states": torch.randn(2, 3, 8)}),
    "unet_pooled": lambda: (
        tiny_text_unet(pooled_width=6), {},
        {"encoder_hidden_states": torch.randn(2, 3, 8), "pooled_text_embeds": torch.randn(2, 6)},
    ),
}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("wrapper", WRAPPERS, ids=lambda cls: cls.__name__)
def test_denoiser_forward_makes_no_host_synchronisation(wrapper, backbone):
    network, config, extra = BACKBONES[backbone]()
    model = wrapper.from_backbone(network, **config).eval()
    x = torch.randn(2, model.image_channels, 8, 8)
    labels = model.check_class_labels([1, 3] if model.config.num_classes else None, batch=2)  # once per call: may sync
    with torch.no_grad(), count_host_syncs() as syncs:
        model(x, torch.tensor([0.3, 7.0]), labels, **extra)
        model(x, 0.7, labels, **extra)  # a Python noise level
    assert syncs.count == 0, syncs.calls


def sample_and_count(pipe: EDMPipeline, steps: int, **kwargs):
    """Sample once; return the host syncs made from the first model call on (the sampling loop, after the per-call
    validation and schedule set-up) and the number made inside each model call."""
    inside, calls = [], []
    with count_host_syncs() as syncs:
        pre = pipe.denoiser.register_forward_pre_hook(lambda module, args: inside.append(syncs.count))
        post = pipe.denoiser.register_forward_hook(lambda module, args, output: calls.append(syncs.count - inside[-1]))
        try:
            pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
        finally:
            pre.remove()
            post.remove()
    return syncs.calls[inside[0]:], calls


@pytest.mark.parametrize("wrapper", [EDMPrecond, IDDPMPrecond], ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("scheduler", ["heun", "heun_churn"])
def test_edm_heun_sampling_loop_makes_no_per_step_sync(wrapper, scheduler):
    """No model call makes a host sync, nor does the loop around them (the pipeline sets the scheduler's begin
    index, so not even the first step looks its timestep up)."""
    denoiser = wrapper.from_backbone(tiny_unet(num_class_embeds=6), num_classes=5, null_class_label=5).eval()
    pipe = EDMPipeline(denoiser, EDMHeunScheduler(s_churn=10.0 if scheduler == "heun_churn" else 0.0))
    pipe.set_progress_bar_config(disable=True)
    few, few_calls = sample_and_count(pipe, 2, class_labels=[1, 4], guidance_scale=2.0)
    many, many_calls = sample_and_count(pipe, 6, class_labels=[1, 4], guidance_scale=2.0)
    assert len(many_calls) == 11 and set(few_calls) | set(many_calls) == {0}
    assert few == many == [], many


@pytest.mark.parametrize("backbone", ["unet", "pixart"])
def test_text_to_image_loop_with_classifier_free_guidance_makes_no_per_step_sync(backbone, tmp_path):
    """Prompts are encoded and checked once per call; the loop's guided calls (both halves in one batch) make no
    host sync."""
    network = tiny_text_unet(channels=3) if backbone == "unet" else tiny_pixart(channels=3)
    pipe = EDMTextToImagePipeline(
        EDMPrecond.from_backbone(network).eval(), EDMHeunScheduler(s_churn=10.0), tiny_clip_tokenizer(tmp_path),
        tiny_clip_text_encoder(),
    )
    pipe.set_progress_bar_config(disable=True)
    few, few_calls = sample_and_count(pipe, 2, prompt=["seven", "two"], guidance_scale=3.0)
    many, many_calls = sample_and_count(pipe, 6, prompt=["seven", "two"], guidance_scale=3.0, guidance_interval=(0.5, 10.0))
    assert len(many_calls) == 11 and set(few_calls) | set(many_calls) == {0}
    assert few == many == [], many


@pytest.mark.parametrize("scheduler_class", [EDMEulerScheduler, EDMDPMSolverMultistepScheduler])
def test_diffusers_scheduler_loop_makes_no_per_step_sync_in_the_package(scheduler_class):
    """diffusers keeps its EDM schedulers' sigmas on the host by design (their per-step comparisons read host memory);
    the pipeline and the denoiser add no per-step sync of their own."""
    pipe = EDMPipeline(VEPrecond.from_backbone(tiny_unet()).eval(), scheduler_class())  # a clamped copy samples
    pipe.set_progress_bar_config(disable=True)
    few, few_calls = sample_and_count(pipe, 2, batch_size=2)
    many, many_calls = sample_and_count(pipe, 6, batch_size=2)
    assert len(many_calls) == 6 and set(few_calls) | set(many_calls) == {0}
    ours = [[call for call in loop if "/diffusers_edm/" in call.location] for loop in (few, many)]
    assert ours[0] == ours[1] == [], ours


# ---------------------------------------------------------------------------------------------- the iDDPM table
def assert_exact_table(model: IDDPMPrecond, device: str = "cpu") -> None:
    table = model.sigma_table
    assert table.dtype == torch.float64 and table.device.type == device
    if device != "meta":
        torch.testing.assert_close(table, U, rtol=1e-12, atol=0)


def test_iddpm_table_is_a_float64_buffer_that_moves_but_is_not_saved(tmp_path):
    model = IDDPMPrecond.from_backbone(tiny_unet()).eval()
    assert "sigma_table" in dict(model.named_buffers()) and "sigma_table" not in model.state_dict()
    half = IDDPMPrecond.from_backbone(tiny_unet()).eval().to(torch.float16)
    assert half.backbone.dtype == torch.float16
    assert_exact_table(half)  # a half cast cannot coarsen the levels
    # The noise label of a table level is its index, also in half precision.
    recorded = []
    half.backbone.register_forward_pre_hook(lambda module, args, kwargs: recorded.append(kwargs["timestep"]), with_kwargs=True)
    half(torch.randn(2, 3, 8, 8, dtype=torch.float16), U[[123, 998]])
    assert recorded[0].tolist() == [1000 - 1 - 123, 1000 - 1 - 998]

    model.to("meta")
    assert_exact_table(model, "meta")  # moves with the model
    assert model.sigma_min == pytest.approx(float(U[999]), rel=1e-12)  # a host value, readable on any device
    model.to_empty(device="cpu")
    assert_exact_table(model)  # rebuilt from the config, not left uninitialised

    model = IDDPMPrecond.from_backbone(tiny_unet()).eval()
    model.save_pretrained(tmp_path)
    for kwargs in ({}, {"low_cpu_mem_usage": True}, {"device_map": "cpu"}, {"torch_dtype": torch.float16}):
        assert_exact_table(IDDPMPrecond.from_pretrained(tmp_path, **kwargs))


def test_iddpm_table_under_empty_weights_and_offload_hooks():
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 5.0])
    expected = IDDPMPrecond.from_backbone(tiny_unet()).eval()(x, sigma).sample
    for include_buffers in (False, True):
        with init_empty_weights(include_buffers=include_buffers):
            empty = IDDPMPrecond(backbone_class="UNet2DModel", backbone_config=dict(tiny_unet().config))
        empty.to_empty(device="cpu")
        assert_exact_table(empty)
    with init_empty_weights():
        assert_exact_table(IDDPMPrecond.from_backbone(tiny_unet()))

    model, _ = cpu_offload_with_hook(IDDPMPrecond.from_backbone(tiny_unet()).eval(), execution_device="cpu")
    torch.testing.assert_close(model(x, sigma).sample, expected, rtol=0, atol=0)
    assert_exact_table(model)
    for offload_buffers in (False, True):  # sequential offload: weights (and buffers) on meta between calls
        model = IDDPMPrecond.from_backbone(tiny_unet()).eval()
        cpu_offload(model, execution_device="cpu", offload_buffers=offload_buffers)
        torch.testing.assert_close(model(x, sigma).sample, expected, rtol=0, atol=0)
        assert (model.sigma_min, model.sigma_max) == (pytest.approx(float(U[999]), rel=1e-12), pytest.approx(float(U[0]), rel=1e-12))


def test_ddp_does_not_broadcast_the_iddpm_table(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    model = IDDPMPrecond.from_backbone(tiny_unet())
    assert len(list(model.buffers())) == 1  # the UNet has no buffers of its own
    torch.distributed.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp(dir=tmp_path)}/store", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        assert list(wrapped.modules_buffers) == [] and not wrapped.will_sync_module_buffers()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("kind", ["sd_epsilon", "sdxl_text_time"])
def test_pretrained_discrete_vp_denoiser_forward_makes_no_host_synchronisation(kind, tmp_path):
    """The fractional timestep is interpolated on the device from the table buffer; SDXL's pooled vector is split on
    the device."""
    from diffusers_edm import pretrained_denoiser
    from tiny_stable_diffusion import make_tiny_sd_pipeline, make_tiny_sdxl_base_pipeline

    pipe = (make_tiny_sd_pipeline if kind == "sd_epsilon" else make_tiny_sdxl_base_pipeline)(tmp_path)
    model = pretrained_denoiser(pipe.unet, pipe.scheduler)
    extra = {"encoder_hidden_states": torch.randn(2, 3, model.context_width)}
    if model.pooled_text_width is not None:
        extra["pooled_text_embeds"] = torch.randn(2, model.pooled_text_width)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad(), count_host_syncs() as syncs:
        model(x, torch.tensor([0.3, 7.0], dtype=torch.float64), **extra)
        model(x, 0.7, **extra)
    assert syncs.count == 0, syncs.calls
