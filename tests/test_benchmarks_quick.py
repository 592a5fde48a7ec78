"""The benchmark scripts in ``benchmarks/`` run in ``--quick`` mode, write their outputs and give sane numbers.

This keeps the scripts from rotting; the full runs and their recorded results are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

from benchmarks import sampler_accuracy, scheduler_overhead  # noqa: E402
from benchmarks.gaussian_mixture import GaussianMixture  # noqa: E402
from benchmarks.scheduler_adapters import FAMILIES, FAMILY_START  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def accuracy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return sampler_accuracy.main(["--quick", "--output-dir", str(tmp_path_factory.mktemp("accuracy"))])


@pytest.fixture(scope="module")
def overhead(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return scheduler_overhead.main(["--quick", "--output-dir", str(tmp_path_factory.mktemp("overhead"))])


def _rows(result: dict) -> dict[str, dict]:
    return {row["name"]: row for row in result["accuracy"]["rows"]}


def _errors(row: dict, metric: str = "rms") -> list[float]:
    return [p[metric] for p in row["points"]]


def test_sampler_accuracy_writes_tables_and_plots(accuracy: dict) -> None:
    files = accuracy["files"]
    table = Path(files["markdown"]).read_text()
    for family in FAMILIES:
        assert f"### {family}" in table and f"### {family}: median per-sample RMS error" in table
    assert "EDMHeunScheduler(grid=edm)" in table and "UniPCMultistepScheduler(" in table and "gamma" in table
    assert "best diffusers config" in table and "WORSE than diffusers' best at calls" in table
    assert Path(files["json"]).stat().st_size > 0
    if HAS_MATPLOTLIB:
        for key in ("accuracy_png", "churn_png"):
            assert Path(files[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reference_agrees_with_itself(accuracy: dict) -> None:
    # The RK4 reference with half the steps: its error bounds what the tables can resolve.
    rows = accuracy["accuracy"]["rows"]
    for family, reference in accuracy["accuracy"]["reference"].items():
        assert reference["rms"] < 1e-4, family
        smallest = min(e for row in rows if row["group"] == family for e in _errors(row))
        assert reference["rms"] < smallest / 10, family


def test_every_configuration_stays_within_its_budget(accuracy: dict) -> None:
    settings = sampler_accuracy.QUICK
    rows = _rows(accuracy)
    assert {row["group"] for row in rows.values()} == set(FAMILIES)
    for name, row in rows.items():
        assert [p["budget"] for p in row["points"]] == list(settings.budgets), name
        for point in row["points"]:
            if row["provider"] == "package":
                assert "failure" not in point, (name, point)
            if "failure" not in point:
                assert point["nfe"] <= point["budget"], (name, point)
                assert 0 <= point["median"] <= point["rms"] * 10 and 0 <= point["switched"] <= 1, (name, point)
                assert point["rms"] < 50, (name, point)


def test_heun_converges_and_matches_diffusers_on_the_same_grid(accuracy: dict) -> None:
    rows = _rows(accuracy)
    heuns = ("EDMHeunScheduler(grid=edm)", "EDMHeunScheduler(grid=time_uniform)", "EDMHeunDiscreteScheduler(grid=edm)")
    for name in heuns + ("HeunDiscreteScheduler(sigmas=karras)",):
        errors = _errors(rows[name])
        assert errors == sorted(errors, reverse=True), (name, errors)  # error decreases with the budget
        assert errors[-1] < 0.5 * errors[0]
        assert [p["nfe"] for p in rows[name]["points"]] == [5, 9, 19]  # 2N - 1 <= budget
    # Same deterministic Heun on the same Karras grid: the package and diffusers agree.
    package = _errors(rows["EDMHeunDiscreteScheduler(grid=edm)"])
    diffusers = _errors(rows["HeunDiscreteScheduler(sigmas=karras)"])
    assert package == pytest.approx(diffusers, rel=1e-3)
    # The exact models evaluate the package's schedulers at their own sigma; diffusers' DPM-Solver rounds its Karras
    # timesteps to integers, which the harness reports.
    for name, row in rows.items():
        if row["provider"] == "package":
            assert max(p["sigma_mismatch"] for p in row["points"]) < 1e-5, name
    dpm = rows["DPMSolverMultistepScheduler(sigmas=karras, order=2, lower_order_final=True, final_sigma=zero)"]
    assert max(p["sigma_mismatch"] for p in dpm["points"]) > 1e-3


def test_package_multistep_matches_diffusers_dpm_solver_and_counts_calls(accuracy: dict) -> None:
    rows = _rows(accuracy)
    # DPM-Solver++ 2M (midpoint form) on EDM's Karras grid, model exact at its sigma in both: the same trajectory.
    package = rows["EDMMultistepScheduler(solver=dpmpp, order=2, afs=False, grid=edm, lower_order_final=True)"]
    diffusers = rows[
        "EDMDPMSolverMultistepScheduler(order=2, solver_type=midpoint, sigmas=karras, lower_order_final=True, final_sigma=zero)"
    ]
    assert _errors(package) == pytest.approx(_errors(diffusers), rel=1e-3)
    # One model call per step; the analytical first step saves the call at sigma_max: every budget is used exactly.
    multistep = [row for row in rows.values() if row["scheduler"].startswith("EDMMultistep")]
    assert {row["options"].get("afs") for row in multistep if row["candidate"]} == {False, True}
    for row in multistep:
        assert [p["nfe"] for p in row["points"]] == [p["budget"] for p in row["points"]], row["name"]
        assert all(p["sigma_start"] == pytest.approx(FAMILY_START[row["group"]]) for p in row["points"]), row["name"]


def test_summary_names_the_best_configuration_of_each_side(accuracy: dict) -> None:
    rows = accuracy["accuracy"]["rows"]
    summary = accuracy["accuracy"]["summary"]
    for family in FAMILIES:
        for index, entry in enumerate(summary[family]["budgets"]):
            for provider in ("diffusers", "package"):
                candidates = [
                    r for r in rows if r["group"] == family and r["provider"] == provider and r["candidate"]
                    and r["points"][index].get("sigma_start") == pytest.approx(FAMILY_START[family], rel=1e-6)
                ]
                best = min(candidates, key=lambda r: r["points"][index]["rms"])
                assert entry[provider]["name"] == best["name"]
                assert entry[provider]["rms"] == best["points"][index]["rms"]
            assert entry["rms_ratio"] == pytest.approx(entry["package"]["rms"] / entry["diffusers"]["rms"])
            assert entry["median_ratio"] == pytest.approx(entry["package"]["median"] / entry["diffusers"]["median"])
        verdict = summary[family]
        ratios = {e["budget"]: e["rms_ratio"] for e in verdict["budgets"]}
        assert sorted(verdict["package_at_or_below"] + verdict["package_above"]) == sorted(ratios)
        assert all(ratios[b] <= 1 for b in verdict["package_at_or_below"])


def test_cross_family_configuration_is_scored_on_both_families(accuracy: dict) -> None:
    rows, summary = accuracy["accuracy"]["rows"], accuracy["accuracy"]["summary"]
    entries = accuracy["accuracy"]["cross_family"]
    assert [e["budget"] for e in entries] == list(sampler_accuracy.QUICK.budgets)
    for index, entry in enumerate(entries):
        for family in FAMILIES:
            # the same options on the family's multistep scheduler, divided by diffusers' best there
            row = next(r for r in rows if r["group"] == family and r["options"] == entry["options"])
            diffusers_best = summary[family]["budgets"][index]["diffusers"]["rms"]
            assert entry["ratios"][family] == pytest.approx(row["points"][index]["rms"] / diffusers_best)
            # one configuration for both families cannot beat each family's own best
            assert entry["worst_ratio"] >= summary[family]["budgets"][index]["rms_ratio"] - 1e-12
        assert entry["worst_ratio"] == pytest.approx(max(entry["ratios"].values()))


def test_sample_errors_count_switched_components_and_median() -> None:
    mixture = GaussianMixture()
    assert mixture.nearest_component(mixture.means).tolist() == list(range(len(mixture.means)))
    reference = mixture.means[:4].clone()
    reference_components = torch.arange(4)
    final = reference.clone()
    final[0] = mixture.means[5]  # ends in another component
    final[1] = final[1] + 0.01  # a small error in every coordinate
    errors = sampler_accuracy.sample_errors(final, reference, reference_components, mixture)
    jump = float((mixture.means[5] - mixture.means[0]).pow(2).mean().sqrt())
    assert errors["switched"] == 0.25
    assert errors["median"] == pytest.approx(0.005)  # per-sample errors (jump, 0.01, 0, 0): mean of the middle two
    assert errors["rms"] == pytest.approx(((jump**2 + 0.01**2) / 4) ** 0.5)
    final[2] = float("nan")
    diverged = sampler_accuracy.sample_errors(final, reference, reference_components, mixture)
    assert diverged["switched"] == 0.5 and diverged["rms"] == float("inf")
    assert diverged["median"] == pytest.approx((0.01 + jump) / 2)  # (jump, 0.01, inf, 0): mean of the middle two


def test_reports_survive_a_configuration_that_fails(tmp_path: Path) -> None:
    # diffusers raises for some option / budget pairs (e.g. beta sigmas at 35+ steps): recorded, never "best".
    def point(budget: int, error: float | None, start: float) -> dict:
        if error is None:
            return {"budget": budget, "nfe": None, "rms": float("inf"), "median": float("inf"), "switched": 1.0, "failure": "IndexError: x"}
        return {"budget": budget, "nfe": budget, "sigma_start": start, "sigma_mismatch": 0.0,
                "rms": error, "median": error / 2, "switched": 0.0}

    rows = []
    for family in FAMILIES:
        start = FAMILY_START[family]
        for name, provider, candidate, errors in (
            ("A(x=1)", "diffusers", True, (0.1, None)),
            ("B(x=2)", "diffusers", True, (0.2, 0.05)),
            ("C(solver=s, y=3)", "package", True, (0.04, 0.1)),
            ("C(solver=auto)", "package", False, (0.04, 0.1)),
        ):
            rows.append({"name": name, "group": family, "provider": provider, "scheduler": name[0], "options": {"solver": "s", "y": 3},
                         "candidate": candidate, "points": [point(b, e, start) for b, e in zip((5, 10), errors)]})
    result = {"rows": rows, "batch": 4, "reference": {f: {"sigma_start": FAMILY_START[f], "nfe": 8, "rms": 1e-9} for f in FAMILIES}}
    summary = sampler_accuracy.summarize(result, (5, 10))
    for family in FAMILIES:
        five, ten = summary[family]["budgets"]
        assert five["diffusers"]["name"] == "A(x=1)" and five["rms_ratio"] == pytest.approx(0.4)
        assert ten["diffusers"]["name"] == "B(x=2)" and ten["rms_ratio"] == pytest.approx(2.0)
        assert summary[family]["package_at_or_below"] == [5] and summary[family]["package_above"] == [10]
        assert summary[family]["about_half_or_less"] == [5] and summary[family]["not_half_at_low_budgets"] == [10]
        assert "failed" in sampler_accuracy.full_table(result, family, (5, 10), "rms")
        assert "A(x=1)" in sampler_accuracy.summary_table(summary[family])
        assert "WORSE than diffusers' best at calls: 10 (2.00)" in "\n".join(sampler_accuracy.verdict(family, summary[family]))
    if HAS_MATPLOTLIB:
        assert sampler_accuracy.plot_accuracy(result, tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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

