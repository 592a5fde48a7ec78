"""The training benchmarks (issue #6, parts 3 and 4) run in ``--quick`` mode, write their outputs and give sane numbers.

Quick runs are far too small to judge speed or quality; these tests keep the scripts from rotting and check that
what they measure is complete and plausible. The full runs and their results are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from benchmarks import sample_quality, training_throughput  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def throughput(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from diffusers_edm.training.train import Trainer

    calls = []
    original = Trainer._train_step

    def counted_step(self, batch):
        calls.append(self)
        return original(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_train_step", counted_step)
        result = training_throughput.main(["--quick", "--output-dir", str(tmp_path_factory.mktemp("throughput"))])
    return {**result, "trainer_step_calls": calls}


@pytest.fixture(scope="module")
def quality(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return sample_quality.main(["--quick", "--output-dir", str(tmp_path_factory.mktemp("quality"))])


def test_training_throughput_measures_every_variant(throughput: dict) -> None:
    files = throughput["files"]
    table = Path(files["markdown"]).read_text()
    assert "Trainer step" in table and "overhead" in table
    assert Path(files["json"]).stat().st_size > 0
    if HAS_MATPLOTLIB:
        assert Path(files["png"]).read_bytes()[:8] == PNG_MAGIC
    rows = throughput["results"]
    assert {r["variant"] for r in rows} == set(training_throughput.VARIANTS)
    for row in rows:
        assert row["seconds_per_step"] > 0 and row["images_per_second"] > 0
        # Quick timings are tiny and noisy: only check the ratio is a ratio of like things, not the 5% target.
        assert -0.5 < row["overhead"] < 2.0 and -0.5 < row["fastest_overhead"] < 2.0
    assert next(r for r in rows if r["variant"] == "bare")["overhead"] == 0.0
    # "Trainer step" is the training script's own step: every timed step (warm-up included) went through it
    settings = training_throughput.QUICK
    size = settings.sizes[0]
    timed = (settings.warmup + settings.repetitions[size]) * settings.steps_per_block[size]
    assert len(throughput["trainer_step_calls"]) >= timed


def test_training_throughput_reports_peak_memory(throughput: dict) -> None:
    memory = throughput["memory"]
    assert {m["variant"] for m in memory} == set(training_throughput.QUICK.memory_variants)
    for record in memory:
        # A fresh process with torch and diffusers imported holds ~100 MB or more; a training step adds to it.
        assert 50 * 2**20 < record["peak_bytes"] < 8 * 2**30
        assert 0 <= record["increase_bytes"] <= record["peak_bytes"]


def test_sample_quality_scores_every_recipe_and_sampler(quality: dict) -> None:
    files = quality["files"]
    table = Path(files["markdown"]).read_text()
    for name in ("EDMHeunScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "LearnedVarianceDDPMScheduler", "real digits"):
        assert name in table
    rows = quality["rows"]
    settings = sample_quality.QUICK
    assert [r["nfe"] for r in rows if r["recipe"].startswith("edm")] == [2 * n - 1 for n in settings.edm_steps]
    assert len(rows) == len(settings.edm_steps) + 2 + len(settings.respaced_steps)
    for row in rows:
        assert 0.0 <= row["frechet"] < 1e4 and 0.0 <= row["accuracy"] <= 1.0 and row["seconds"] > 0
    # The real-digit floor is closer to the held-out digits than 4-step models' samples can be.
    assert quality["floor"]["frechet"] < min(r["frechet"] for r in rows)
    assert 0.1 < quality["classifier_accuracy"] <= 1.0  # one epoch on 8x8 digits: well above chance (0.1)
    assert set(quality["training"]) == {"edm", "diffusers", "learned variance"}
    assert isinstance(quality["claim_holds"], bool) and isinstance(quality["claim_resolved"], bool)
    spread = quality["floor"]["spread"]  # the distance's draw-to-draw spread for real digits
    assert 0.0 <= spread["min"] <= spread["mean"] <= spread["max"] and spread["std"] >= 0.0


def test_sample_quality_writes_grids_and_plot(quality: dict) -> None:
    grids = quality["files"]["grids"]
    assert len(grids) == len(quality["rows"]) + 1  # one per recipe and sampler, plus the real digits
    for path in grids.values():
        assert Path(path).read_bytes()[:8] == PNG_MAGIC
    if HAS_MATPLOTLIB:
        assert Path(quality["files"]["png"]).read_bytes()[:8] == PNG_MAGIC
