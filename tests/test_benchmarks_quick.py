"""The benchmark scripts in ``benchmarks/`` run in ``--quick`` mode, write their outputs and give sane numbers.

This keeps the scripts from rotting; the full runs and their recorded results are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from benchmarks import sampler_accuracy, scheduler_overhead  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def accuracy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return sampler_accuracy.main(["--quick", "--output-dir", str(tmp_path_factory.mktemp("accuracy"))])


@pytest.fixture(scope="module")
def overhead(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return scheduler_overhead.main(["--quick", "--output-dir", str(tmp_path_factory.mktemp("overhead"))])


def _rows(result: dict) -> dict[str, dict]:
    return {row["name"]: row for row in result["accuracy"]["rows"]}


def test_sampler_accuracy_writes_table_and_plots(accuracy: dict) -> None:
    files = accuracy["files"]
    table = Path(files["markdown"]).read_text()
    assert "EDMHeunScheduler (edm)" in table and "UniPCMultistepScheduler" in table and "gamma" in table
    assert Path(files["json"]).stat().st_size > 0
    if HAS_MATPLOTLIB:
        for key in ("accuracy_png", "churn_png"):
            assert Path(files[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reference_agrees_with_itself(accuracy: dict) -> None:
    # The RK4 reference with half the steps: its error bounds what the table can resolve.
    reference = _rows(accuracy)[sampler_accuracy.REFERENCE_NAME]["points"][0]["error"]
    assert reference < 1e-4
    smallest = min(p["error"] for name, row in _rows(accuracy).items() if name != sampler_accuracy.REFERENCE_NAME for p in row["points"])
    assert reference < smallest / 10


def test_every_scheduler_converges_and_heun_nfe_is_2n_minus_1(accuracy: dict) -> None:
    rows = _rows(accuracy)
    for name in ("EDMHeunScheduler (edm)", "EDMHeunScheduler (vp)", "EDMHeunDiscreteScheduler", "HeunDiscreteScheduler (karras)"):
        errors = [p["error"] for p in rows[name]["points"]]
        assert errors == sorted(errors, reverse=True), (name, errors)  # error decreases with NFE
        assert errors[-1] < 0.5 * errors[0]
        assert [p["nfe"] for p in rows[name]["points"]] == [5, 9, 19]
    for name, row in rows.items():
        assert all(0 <= p["error"] < 50 for p in row["points"]), name
    # Same deterministic Heun on the same Karras grid: the package and diffusers agree.
    package = [p["error"] for p in rows["EDMHeunDiscreteScheduler"]["points"]]
    diffusers = [p["error"] for p in rows["HeunDiscreteScheduler (karras)"]["points"]]
    assert package == pytest.approx(diffusers, rel=1e-3)
    # The exact VP model wrapper evaluates at the scheduler's own sigma.
    assert rows["EDMHeunDiscreteScheduler"]["sigma_mismatch"] < 1e-5


def test_churn_records_are_complete_and_finite(accuracy: dict) -> None:
    churn = accuracy["churn"]
    settings = sampler_accuracy.QUICK
    heun = [r for r in churn["records"] if r["family"] == "heun"]
    assert len(heun) == len(settings.churn_steps) * len(settings.shrinks) * len(settings.churn_gammas)
    for record in churn["records"]:
        assert 0 <= record["frechet"] < 100 and 0 <= record["sliced_w2"] < 10
    # An exact mixture sample is closer to the mixture than any sampler output with a wrong denoiser.
    worst_shrunk = max(r["sliced_w2"] for r in heun if r["shrink"] > 0)
    assert churn["floor"]["sliced_w2"] < worst_shrunk


def test_scheduler_overhead_writes_ratios_table_and_plot(overhead: dict) -> None:
    files = overhead["files"]
    table = Path(files["markdown"]).read_text()
    assert "EDMHeunDiscreteScheduler" in table and "ratio" in table
    if HAS_MATPLOTLIB:
        assert Path(files["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compared = [r for r in overhead["results"] if r["baseline"] is not None]
    assert {r["batch"] for r in compared} == {1, 64}
    for row in compared:
        # Quick timings are far too short to judge speed; check only that they are measured and comparable.
        # (the multistep rows' loops are far cheaper than DPMSolverMultistep's: no lower bound near 0.05 there)
        assert row["step"] > 0 and row["loop"] > 0 and 0.01 < row["loop_ratio"] < 20
        heun = "Heun" in row["scheduler"] and "euler" not in row["scheduler"]
        assert row["calls"] == (35 if heun else 18)  # Heun: 2N - 1 calls for N = 18; Euler and multistep: 18
    syncs = {record["scheduler"]: record for record in overhead["host_syncs"]}
    assert set(syncs) == {row["scheduler"] for row in overhead["results"]}
    for row in compared:  # the package's schedulers, started as pipelines start them, never synchronise
        assert syncs[row["scheduler"]]["syncs_with_begin_index"] == 0, syncs[row["scheduler"]]

