"""``diffusers-edm-generate``: one image per seed, independent of the batch size and of the number of processes (issue
13), EDM's PNG layout, resume, class labels per seed, the ``.npz`` output, and its input contracts (offline, CPU)."""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_edm import EDMHeunScheduler, EDMPipeline, EDMPrecond, LearnedVariancePipeline
from diffusers_edm.evaluation import generate
from diffusers_edm.evaluation.generate import LabelRule, configure_scheduler, main, parse_args, parse_seeds
from diffusers_edm.schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler
from tiny_backbones import tiny_unet
from accelerate_launch import free_port

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

NUM_CLASSES = 5  # the conditional EDM model's classes (its label 5 is the null label)
STEPS = ["--num_inference_steps", "3"]
CHURN = ["--s_churn", "40", "--s_noise", "1.003"]  # Algorithm 2's stochastic steps: noise at every step


# ------------------------------------------------------------------------------------------------ tiny pipelines
@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny pipelines: a class-conditional EDM model (RGB), an unconditional one-channel EDM model, a
    class-conditional learned-variance model, and diffusers' DDPMPipeline (a pipeline without guidance options)."""
    root = tmp_path_factory.mktemp("pipelines")
    conditional = EDMPrecond.from_backbone(tiny_unet(num_class_embeds=NUM_CLASSES + 1), num_classes=NUM_CLASSES, null_class_label=NUM_CLASSES)
    EDMPipeline(conditional.eval(), EDMHeunScheduler()).save_pretrained(root / "edm")
    EDMPipeline(EDMPrecond.from_backbone(tiny_unet(channels=1)).eval(), EDMHeunScheduler()).save_pretrained(root / "edm-gray")
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=3,
    )
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=40, beta_schedule="squaredcos_cap_v2")
    LearnedVariancePipeline(unet=unet.eval(), scheduler=scheduler, null_class_label=2).save_pretrained(root / "learned-variance")
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(root / "ddpm")
    return {path.name: path for path in root.iterdir()}


def pngs(folder: Path) -> dict[str, bytes]:
    """Every PNG under ``folder`` by its path relative to it, as bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*.png"))}


def expected_files(seeds) -> set[str]:
    """EDM's layout, stated independently: a folder per thousand seeds, six digits each."""
    return {f"{1000 * (seed // 1000):06d}/{seed:06d}.png" for seed in seeds}


class CallRecorder:
    """Wraps a pipeline class's ``__call__``: records the seed (the generator's initial seed) and label of each image."""

    def __init__(self, monkeypatch, pipeline_class):
        self.images: list[tuple[int, int | None]] = []
        self.batches: list[int] = []
        original = pipeline_class.__call__

        @functools.wraps(original)  # the same signature: generate_images checks the call's parameters
        def call(pipe, *args, **kwargs):
            generators = kwargs["generator"]
            labels = kwargs.get("class_labels") or [None] * len(generators)
            self.batches.append(len(generators))
            self.images += [(g.initial_seed(), label) for g, label in zip(generators, labels)]
            return original(pipe, *args, **kwargs)

        monkeypatch.setattr(pipeline_class, "__call__", call)


# ------------------------------------------------------------------------------------------------ seed-exactness
CASES = {
    "edm-churn": ("edm", [*CHURN, "--class_labels", "cyclic"]),
    "learned-variance": ("learned-variance", ["--class_labels", "random"]),
}


def case_options(pipelines: dict[str, Path], case: str) -> list[str]:
    name, options = CASES[case]
    return ["--pipeline", str(pipelines[name]), "--seeds", "0-15", *STEPS, *options]


@pytest.fixture(scope="module")
def two_process_runs(pipelines, tmp_path_factory) -> tuple[Path, str]:
    """Every case with ``--batch 5`` on 2 processes (``accelerate launch --multi_gpu --num_processes 2``: torchrun,
    gloo on a machine without CUDA), in one launch; the folder of each case's PNGs, and the launch's output."""
    root = tmp_path_factory.mktemp("two-processes")
    runs = [[*case_options(pipelines, case), "--batch", "5", "--outdir", str(root / case), "--next"] for case in CASES]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(Path(__file__).with_name("generate_multiprocess_script.py")), *itertools.chain.from_iterable(runs),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return root, result.stdout


@pytest.mark.parametrize("case", CASES)
def test_images_of_seeds_0_to_15_do_not_depend_on_batch_size_or_process_count(case, pipelines, two_process_runs, tmp_path):
    main([*case_options(pipelines, case), "--batch", "16", "--outdir", str(tmp_path / "b16")])
    main([*case_options(pipelines, case), "--batch", "5", "--outdir", str(tmp_path / "b5")])
    root, stdout = two_process_runs
    # the main process's summary: both processes drew (8 seeds each), none was there before
    assert "Generated 16 of 16 images (0 already there)" in stdout and f"with 2 process(es): {root / case}\n" in stdout

    reference = pngs(tmp_path / "b16")
    assert set(reference) == expected_files(range(16))
    assert pngs(tmp_path / "b5") == reference  # byte for byte
    assert pngs(root / case) == reference


def test_the_image_of_a_seed_is_the_pipelines_sample_from_that_seed_alone(pipelines, tmp_path):
    """Seed k's PNG is the pipeline's batch-of-one sample with ``torch.Generator().manual_seed(k)`` and label
    ``k % 5`` (cyclic), in EDM's layout across the thousands; with churn, so the step noise comes from that seed too."""
    seeds = [3, 999, 1000, 2047]
    main(["--pipeline", str(pipelines["edm"]), "--seeds", "2047,999-1000,3", "--batch", "3", *STEPS, *CHURN,
          "--class_labels", "cyclic", "--outdir", str(tmp_path)])
    assert set(pngs(tmp_path)) == expected_files(seeds)
    pipe = EDMPipeline.from_pretrained(pipelines["edm"])
    pipe.scheduler = EDMHeunScheduler.from_config(pipe.scheduler.config, s_churn=40, s_noise=1.003)
    for seed in seeds:
        image = pipe(class_labels=seed % NUM_CLASSES, num_inference_steps=3, generator=torch.Generator().manual_seed(seed)).images[0]
        written = PIL.Image.open(tmp_path / f"{1000 * (seed // 1000):06d}" / f"{seed:06d}.png")
        assert written.mode == "RGB" and written.size == (8, 8)
        np.testing.assert_array_equal(np.asarray(written), np.asarray(image))


def test_one_channel_model_writes_grayscale_and_npz_holds_the_pngs_in_seed_order(pipelines, tmp_path):
    options = ["--pipeline", str(pipelines["edm-gray"]), "--seeds", "7,2-3", "--batch", "2", *STEPS]
    main([*options, "--outdir", str(tmp_path / "png")])
    main([*options, "--npz", str(tmp_path / "samples.npz")])
    with np.load(tmp_path / "samples.npz") as data:
        images, seeds = data["images"], data["seeds"]
    assert seeds.tolist() == [2, 3, 7] and images.dtype == np.uint8 and images.shape == (3, 8, 8, 1)
    for image, seed in zip(images, seeds):
        written = PIL.Image.open(tmp_path / "png" / "000000" / f"{seed:06d}.png")
        assert written.mode == "L"
        np.testing.assert_array_equal(image[..., 0], np.asarray(written))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["png", "samples.npz"]  # the parts are removed
    with pytest.raises(ValueError, match="samples.npz.*exists"):
        main([*options, "--npz", str(tmp_path / "samples.npz")])


# ------------------------------------------------------------------------------------------------ resume
def test_a_rerun_draws_only_the_missing_seeds_and_leaves_the_others_untouched(pipelines, tmp_path, monkeypatch):
    options = ["--pipeline", str(pipelines["edm"]), "--seeds", "0-7", "--batch", "3", *STEPS, "--outdir", str(tmp_path)]
    main(options)
    first = pngs(tmp_path)
    for seed in (2, 6):
        (tmp_path / "000000" / f"{seed:06d}.png").unlink()
    times = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.png")}
    recorder = CallRecorder(monkeypatch, EDMPipeline)
    main(options)
    assert [seed for seed, _ in recorder.images] == [2, 6] and recorder.batches == [2]
    assert {path: path.stat().st_mtime_ns for path in times} == times
    assert pngs(tmp_path) == first


def test_a_run_killed_while_writing_leaves_no_png_and_the_rerun_draws_it(pipelines, tmp_path, monkeypatch):
    options = ["--pipeline", str(pipelines["edm"]), "--seeds", "0-3", "--batch", "4", *STEPS, "--outdir", str(tmp_path)]
    original_save = PIL.Image.Image.save
    saved = []

    def killed_during_the_third_write(image, file, *args, **kwargs):
        if len(saved) == 2:
            file.write(b"\x89PNG\r\n")  # the start of a PNG, then the process dies
            raise KeyboardInterrupt
        saved.append(file)
        return original_save(image, file, *args, **kwargs)

    monkeypatch.setattr(PIL.Image.Image, "save", killed_during_the_third_write)
    with pytest.raises(KeyboardInterrupt):
        main(options)
    assert set(pngs(tmp_path)) == expected_files([0, 1])
    monkeypatch.setattr(PIL.Image.Image, "save", original_save)
    recorder = CallRecorder(monkeypatch, EDMPipeline)
    main(options)
    assert [seed for seed, _ in recorder.images] == [2, 3]
    assert set(pngs(tmp_path)) == expected_files(range(4))
    assert [path.name for path in tmp_path.rglob("*") if path.is_file() and not path.name.endswith(".png")] == []


def test_a_stale_partial_file_of_a_killed_process_is_removed_and_not_counted(pipelines, tmp_path):
    folder = tmp_path / "000000"
    folder.mkdir()
    (folder / ".000001.png.abc123.tmp").write_bytes(b"\x89PNG")  # as a killed process leaves it
    main(["--pipeline", str(pipelines["edm-gray"]), "--seeds", "1", *STEPS, "--outdir", str(tmp_path)])
    assert sorted(path.name for path in folder.iterdir()) == ["000001.png"]


# ------------------------------------------------------------------------------------------------ class labels
@pytest.mark.parametrize(
    "option,expected",
    [
        (["--class_labels", "fixed:3"], lambda seed: 3),
        (["--class_labels", "cyclic"], lambda seed: seed % NUM_CLASSES),
        # random: one draw per seed from numpy's generator seeded by that seed alone, whatever the batch
        (["--class_labels", "random"], lambda seed: int(np.random.default_rng(seed).integers(NUM_CLASSES))),
        ([], lambda seed: int(np.random.default_rng(seed).integers(NUM_CLASSES))),  # the default, as EDM's
    ],
)
def test_class_labels_per_seed(option, expected, pipelines, tmp_path, monkeypatch):
    recorder = CallRecorder(monkeypatch, EDMPipeline)
    main(["--pipeline", str(pipelines["edm"]), "--seeds", "0-2,10,1001", "--batch", "2", "--num_inference_steps", "1",
          *option, "--outdir", str(tmp_path)])
    seeds = [0, 1, 2, 10, 1001]
    assert recorder.images == [(seed, expected(seed)) for seed in seeds]
    if option and option[1] == "random":
        labels = [label for _, label in recorder.images]
        assert len(set(labels)) > 1  # not one label for all


def test_learned_variance_labels_index_the_real_classes(pipelines, tmp_path, monkeypatch):
    """The learned-variance model's table has 3 rows, the last the null label: cyclic labels run over 2 classes."""
    recorder = CallRecorder(monkeypatch, LearnedVariancePipeline)
    main(["--pipeline", str(pipelines["learned-variance"]), "--seeds", "0-4", "--num_inference_steps", "2",
          "--class_labels", "cyclic", "--outdir", str(tmp_path)])
    assert recorder.images == [(seed, seed % 2) for seed in range(5)]
    with pytest.raises(ValueError, match="fixed:2"):
        main(["--pipeline", str(pipelines["learned-variance"]), "--seeds", "0", "--class_labels", "fixed:2", "--outdir", str(tmp_path)])


@pytest.mark.parametrize("rule", ["fixed:0", "cyclic", "random"])
def test_an_unconditional_model_refuses_a_label_option(rule, pipelines, tmp_path):
    with pytest.raises(ValueError, match=f"--class_labels {rule}.*unconditional"):
        main(["--pipeline", str(pipelines["edm-gray"]), "--seeds", "0", "--class_labels", rule, "--outdir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ sampler options
def test_scheduler_and_option_refusals_name_the_option(pipelines, tmp_path):
    base = ["--pipeline", str(pipelines["edm"]), "--seeds", "0", "--outdir", str(tmp_path)]
    with pytest.raises(ValueError, match=r"scheduler must be one of \['EDMHeunScheduler', 'EDMMultistepScheduler', 'EDMEulerScheduler', 'EDMDPMSolverMultistepScheduler'\].*'DDPMScheduler'"):
        main([*base, "--scheduler", "DDPMScheduler"])
    with pytest.raises(ValueError, match=r"--s_churn sets the scheduler's s_churn, which EDMMultistepScheduler does not have.*\['EDMHeunScheduler'\]"):
        main([*base, "--scheduler", "EDMMultistepScheduler", "--s_churn", "10"])
    with pytest.raises(ValueError, match=r"--solver must be one of \['heun', 'euler'\] for EDMHeunScheduler, got 'ipndm'"):
        main([*base, "--solver", "ipndm"])
    with pytest.raises(ValueError, match=r"--guidance_scale is not an option of DDPMPipeline"):
        main(["--pipeline", str(pipelines["ddpm"]), "--seeds", "0", "--guidance_scale", "2", "--outdir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_scheduler_options_reach_the_scheduler(pipelines, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(generate, "generate_images", lambda pipe, *args, **kwargs: seen.append((pipe.scheduler, kwargs)))
    main(["--pipeline", str(pipelines["edm"]), "--seeds", "0", "--outdir", str(tmp_path), "--scheduler", "EDMMultistepScheduler",
          "--solver", "ipndm", "--num_inference_steps", "7", "--guidance_scale", "2", "--guidance_interval", "0.1", "5"])
    (scheduler, kwargs), = seen
    assert type(scheduler).__name__ == "EDMMultistepScheduler" and scheduler.config.solver == "ipndm"
    assert kwargs["num_inference_steps"] == 7 and kwargs["guidance_scale"] == 2.0 and kwargs["guidance_interval"] == (0.1, 5.0)
    seen.clear()
    main(["--pipeline", str(pipelines["edm"]), "--seeds", "0", "--outdir", str(tmp_path),
          "--s_churn", "40", "--s_min", "0.05", "--s_max", "50", "--s_noise", "1.003"])
    config = seen[0][0].config
    assert (config.s_churn, config.s_tmin, config.s_tmax, config.s_noise) == (40, 0.05, 50, 1.003)


# ------------------------------------------------------------------------------------------------ input contracts
def expand(spec: list[tuple[int, int]]) -> list[int]:
    """EDM's seed list, stated independently: the union of the inclusive ranges, sorted."""
    return sorted({seed for low, high in spec for seed in range(low, high + 1)})


seed_ranges = st.lists(
    st.tuples(st.integers(0, 3000), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])), min_size=1, max_size=5
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed_ranges, st.data())
def test_seed_syntax_gives_the_union_of_the_ranges(spec, data):
    parts = [f"{low}" if low == high and data.draw(st.booleans()) else f"{low}-{high}" for low, high in spec]
    assert parse_args(["--pipeline", "p", "--outdir", "o", "--seeds", ",".join(parts)]).seeds == expand(spec)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="0123456789-, x.+e\u0663", min_size=0, max_size=12))
def test_seed_text_is_parsed_or_refused_by_name(text):
    try:
        seeds = parse_seeds(text)
    except ValueError as error:
        assert repr(text) in str(error) and "seeds" in str(error)
        with pytest.raises(ValueError, match="^--seeds must be comma-separated seeds"):
            parse_args(["--pipeline", "p", "--outdir", "o", f"--seeds={text}"])
        return
    # accepted: every part is a seed or an ordered range of ASCII digits
    spec = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        spec.append((int(low), int(high.strip() or low)))
    assert seeds == expand(spec)


def test_seed_refusals_name_the_bad_part():
    for text, part in [("5-2", "'5-2'"), ("0-9,x", "'x'"), ("", "''"), ("-3", "'-3'"), ("4294967296", "'4294967296'")]:
        with pytest.raises(ValueError, match=f"bad part {part}"):
            parse_seeds(text)
    with pytest.raises(ValueError, match="select 10000001 seeds"):
        parse_seeds("0-10000000")


NUMERIC_OPTIONS = {  # (minimum, maximum) as each option's help states them; integers where marked
    "batch": ("int", 1, math.inf), "num_inference_steps": ("int", 1, math.inf), "s_churn": ("real", 0, math.inf),
    "s_min": ("real", 0, math.inf), "s_max": ("real", 0, math.inf), "s_noise": ("real", 0, math.inf),
    "guidance_scale": ("real", -math.inf, math.inf), "classifier_scale": ("real", 0, 1000),
}
HOSTILE = ["nan", "inf", "-inf", "0", "-0", "-1", "0.5", "1", "1e300", "1e309", "abc", "", " ", "1,2", "True", "ddim5"]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(NUMERIC_OPTIONS)), st.one_of(st.sampled_from(HOSTILE), st.floats().map(repr), st.integers(-5, 10**6).map(str)))
def test_numeric_options_are_refused_by_name_or_parsed_in_range(option, text):
    kind, low, high = NUMERIC_OPTIONS[option]
    try:
        value = getattr(parse_args(["--pipeline", "p", "--seeds", "0", "--outdir", "o", f"--{option}={text}"]), option)
    except ValueError as error:
        assert str(error).startswith(f"--{option} must be"), error
        return
    if option == "num_inference_steps" and isinstance(value, str):  # a respacing string, checked by the scheduler
        assert value == text.strip() and value.replace("ddim", "").replace(",", "").isdigit()
        return
    assert not isinstance(value, bool) and isinstance(value, int if kind == "int" else float)
    assert math.isfinite(value) and low <= value <= high


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(-3, 3), st.sampled_from(["batch"]))
def test_batch_below_one_is_refused(batch, option):
    if batch >= 1:
        assert parse_args(["--pipeline", "p", "--seeds", "0", "--outdir", "o", f"--{option}", str(batch)]).batch == batch
    else:
        with pytest.raises(ValueError, match=rf"^--batch must be an integer >= 1, got {batch}"):
            parse_args(["--pipeline", "p", "--seeds", "0", "--outdir", "o", f"--{option}", str(batch)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.sampled_from(["fixed:0", "fixed:12", "cyclic", "random", "fixed:", "fixed:-1", "Random", "fixed:1.5", ""]), st.text(max_size=8)))
def test_label_rule_text_is_parsed_or_refused_by_name(text):
    try:
        rule = parse_args(["--pipeline", "p", "--seeds", "0", "--outdir", "o", f"--class_labels={text}"]).class_labels
    except ValueError as error:
        assert str(error).startswith("--class_labels must be one of ('fixed:K', 'cyclic', 'random')") and repr(text) in str(error)
        return
    assert str(rule) == text.strip() and isinstance(rule, LabelRule)


def test_guidance_interval_needs_lo_below_hi():
    with pytest.raises(ValueError, match=r"--guidance_interval must be LO HI with LO < HI, got \[2.0, 1.0\]"):
        parse_args(["--pipeline", "p", "--seeds", "0", "--outdir", "o", "--guidance_interval", "2", "1"])
    with pytest.raises(ValueError, match=r"--guidance_interval must be a finite number >= 0, got -1"):
        parse_args(["--pipeline", "p", "--seeds", "0", "--outdir", "o", "--guidance_interval", "-1", "1"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.sampled_from(["EDMHeunScheduler", "EDMMultistepScheduler", "EDMEulerScheduler",
                                  "EDMDPMSolverMultistepScheduler", "DDPMScheduler", "edmheunscheduler", ""]), st.text(max_size=10)))
def test_only_the_pipelines_compatible_schedulers_are_accepted(edm_pipeline, name):
    accepted = {"EDMHeunScheduler", "EDMMultistepScheduler", "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"}
    if name in accepted:
        assert type(configure_scheduler(edm_pipeline, name)).__name__ == name
    else:
        with pytest.raises(ValueError, match=f"scheduler must be one of .* got {re.escape(repr(name))}"):
            configure_scheduler(edm_pipeline, name)


@pytest.fixture(scope="module")
def edm_pipeline(pipelines) -> EDMPipeline:
    return EDMPipeline.from_pretrained(pipelines["edm"])
