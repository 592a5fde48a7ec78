"""Sampler accuracy vs number of model evaluations (NFE), against an exact reference (issue #6, part 1).

What is measured:

1. **ODE accuracy.** Data: a Gaussian mixture in 64 dimensions with an exact denoiser ``D(x; sigma)``
   (:mod:`benchmarks.gaussian_mixture`). Every scheduler starts from the same noisy samples
   ``x = y + sigma_max n`` (same y, same n) at its own largest sigma, integrates down to sigma = 0 with the
   exact model, and is compared with the reference solution of the probability-flow ODE from the same start
   (:mod:`benchmarks.probability_flow_reference`, RK4 in log-sigma, float64). The error is the RMS over samples
   and coordinates of ``x_final - x_reference`` (the data's per-coordinate std is about 0.44). The reference
   recomputed with half as many steps gives the "reference vs reference" row: its own accuracy.
   NFE targets {5, 10, 20, 35, 50, 80}; Heun-type schedulers (2N - 1 calls for N steps) run the largest
   N with 2N - 1 <= target, and the actual NFE is recorded.
2. **Churn with a slightly wrong denoiser.** ``EDMHeunScheduler`` (Algorithm 2) with per-step churn
   ``gamma = S_churn / N`` (S_tmin 0.05, S_tmax 50, S_noise 1) and a denoiser shrunk towards the data mean,
   ``D' = m + (1 - shrink)(D - m)``. The distance between the sample set and the mixture is the moment
   Frechet distance and the sliced Wasserstein-2 distance (:mod:`benchmarks.distribution_distances`), next to
   the same distances for an exact mixture sample of the same size (the finite-sample floor). Also diffusers'
   ``EDMEulerScheduler`` churn (noise added after the model call) vs the package's Euler Algorithm 2.

Run: ``python -m benchmarks.sampler_accuracy [--quick] [--device cpu|cuda] [--output-dir DIR]``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import EDMEulerScheduler
from diffusers.utils import logging as diffusers_logging

from benchmarks.distribution_distances import moment_frechet_distance, random_directions, sliced_wasserstein
from benchmarks.gaussian_mixture import GaussianMixture
from benchmarks.probability_flow_reference import solve_probability_flow
from benchmarks.reporting import (
    restores_torch_threads,
    write_record,
    common_arguments,
    machine_description,
    markdown_table,
    pyplot,
    resolve_device,
    save_figure,
)
from benchmarks.scheduler_adapters import SamplerCase, accuracy_cases, run_sampler, start_sigma
from diffusers_edm import EDMHeunScheduler

NFE_TARGETS = (5, 10, 20, 35, 50, 80)
REFERENCE_NAME = "reference (RK4, half the steps)"


@dataclass(frozen=True)
class AccuracySettings:
    """Sizes of one run (full or ``--quick``)."""

    dim: int
    num_components: int
    batch: int
    reference_steps: int
    nfe_targets: tuple[int, ...]
    churn_batch: int
    churn_steps: tuple[int, ...]
    churn_gammas: tuple[float, ...]
    shrinks: tuple[float, ...]
    sliced_directions: int


FULL = AccuracySettings(
    dim=64,
    num_components=8,
    batch=512,
    reference_steps=2000,
    nfe_targets=NFE_TARGETS,
    churn_batch=4096,
    churn_steps=(18, 64),
    churn_gammas=(0.0, 0.02, 0.05, 0.1, 0.2, math.sqrt(2) - 1),
    shrinks=(0.0, 0.01, 0.03),
    sliced_directions=256,
)
QUICK = AccuracySettings(
    dim=64,
    num_components=8,
    batch=64,
    reference_steps=400,
    nfe_targets=(5, 10, 20),
    churn_batch=512,
    churn_steps=(10,),
    churn_gammas=(0.0, 0.1, math.sqrt(2) - 1),
    shrinks=(0.0, 0.03),
    sliced_directions=64,
)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference over every sample and coordinate."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean().sqrt())


# ------------------------------------------------------------------------------------------------ part 1
def measure_ode_accuracy(
    mixture: GaussianMixture, settings: AccuracySettings, device: torch.device
) -> dict[str, Any]:
    """Error of every scheduler of :func:`accuracy_cases` at every NFE target, against the RK4 reference."""
    generator = torch.Generator(device=device).manual_seed(1)
    y = mixture.sample(settings.batch, generator)
    noise = torch.randn(y.shape, generator=generator, dtype=torch.float64, device=device)
    references: dict[float, torch.Tensor] = {}

    def reference(sigma_start: float) -> torch.Tensor:
        # One reference per distinct start (80 for sigma-space schedulers, the SD table's top for VP ones).
        if sigma_start not in references:
            references[sigma_start] = solve_probability_flow(
                mixture.denoise, y + sigma_start * noise, sigma_start, 0.0, settings.reference_steps
            )
        return references[sigma_start]

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    # The reference's own accuracy: the same solve with half as many steps.
    edm_start = 80.0
    half = solve_probability_flow(mixture.denoise, y + edm_start * noise, edm_start, 0.0, settings.reference_steps // 2)
    rows.append(
        {
            "name": REFERENCE_NAME,
            "group": "reference",
            "points": [{"nfe_target": None, "nfe": 4 * (settings.reference_steps // 2), "error": rms(half, reference(edm_start))}],
            "sigma_start": edm_start,
            "sigma_mismatch": 0.0,
        }
    )
    for case in accuracy_cases():
        points, mismatch, sigma_start = [], 0.0, None
        for target in settings.nfe_targets:
            num_steps = case.steps_for_nfe(target)
            sigma_start = start_sigma(case, num_steps)
            run = run_sampler(case, num_steps, mixture.denoise, y + sigma_start * noise, sigma_start, device)
            points.append({"nfe_target": target, "nfe": run.nfe, "error": rms(run.final, reference(sigma_start))})
            mismatch = max(mismatch, run.sigma_mismatch)
        rows.append({"name": case.name, "group": case.group, "points": points, "sigma_start": sigma_start, "sigma_mismatch": mismatch})
    return {"rows": rows, "seconds": time.perf_counter() - started, "reference_steps": settings.reference_steps}


def accuracy_table(result: dict[str, Any], nfe_targets: Sequence[int]) -> str:
    """Markdown table: one row per scheduler, one column per NFE target (actual NFE in brackets when it differs)."""
    headers = ["scheduler", "sigma_max"] + [f"NFE {n}" for n in nfe_targets] + ["max sigma mismatch"]
    table_rows = []
    for row in result["rows"]:
        if row["group"] == "reference":
            point = row["points"][0]
            cells = [f"{point['error']:.1e} (RK4 {point['nfe']} calls)"] + [""] * (len(nfe_targets) - 1)
        else:
            cells = [
                f"{p['error']:.2e}" + ("" if p["nfe"] == p["nfe_target"] else f" ({p['nfe']})") for p in row["points"]
            ]
        table_rows.append([row["name"], f"{row['sigma_start']:.4g}", *cells, f"{row['sigma_mismatch']:.1e}"])
    return markdown_table(headers, table_rows)


def plot_accuracy(result: dict[str, Any], path: Path) -> Path | None:
    """Log-log error vs NFE, one panel per sigma range, the reference's own error as a dashed line."""
    plt = pyplot()
    if plt is None:
        return None
    groups = [g for g in dict.fromkeys(row["group"] for row in result["rows"]) if g != "reference"]
    reference_error = next(r for r in result["rows"] if r["group"] == "reference")["points"][0]["error"]
    figure, axes = plt.subplots(1, len(groups), figsize=(6.2 * len(groups), 4.6), squeeze=False)
    markers = "osD^v<>ph*"
    for axis, group in zip(axes[0], groups):
        rows = [r for r in result["rows"] if r["group"] == group]
        for index, row in enumerate(rows):
            package = row["name"].startswith("EDMHeun")  # the package's schedulers: solid lines
            axis.loglog(
                [p["nfe"] for p in row["points"]],
                [max(p["error"], 1e-16) for p in row["points"]],
                marker=markers[index % len(markers)],
                linestyle="-" if package else "--",
                linewidth=1.8 if package else 1.2,
                markersize=4,
                label=row["name"],
            )
        axis.axhline(max(reference_error, 1e-16), color="gray", linestyle=":", linewidth=1, label="reference's own error")
        axis.set_title(group, fontsize=10)
        axis.set_xlabel("model evaluations (NFE)")
        axis.set_ylabel("RMS error vs reference ODE solution")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("Probability-flow ODE accuracy, 64-D Gaussian mixture, exact denoiser", fontsize=11)
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------ part 2
def churn_cases(gamma: float, num_steps: int) -> list[tuple[str, str, SamplerCase]]:
    """(family, label, case): Algorithm 2 with Heun and with Euler, and diffusers' EDMEuler churn, at per-step churn gamma."""
    s_churn = gamma * num_steps  # gamma = min(S_churn / N, sqrt(2) - 1)
    churn = {"s_churn": s_churn, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.0}
    return [
        ("heun", "EDMHeunScheduler (Algorithm 2, Heun)", SamplerCase("heun", "churn", lambda: EDMHeunScheduler(**churn), "sigma", 2)),
        ("euler", "EDMHeunScheduler(solver='euler') (Algorithm 2)", SamplerCase("euler", "churn", lambda: EDMHeunScheduler(solver="euler", **churn), "sigma", 1)),
        # diffusers' EDMEuler takes the churn as step() arguments and adds the noise after the model call.
        ("diffusers-euler", "EDMEulerScheduler (diffusers churn)", SamplerCase("diffusers-euler", "churn", lambda: EDMEulerScheduler(), "edm_preconditioned", 1, step_kwargs=churn)),
    ]


def measure_churn(mixture: GaussianMixture, settings: AccuracySettings, device: torch.device) -> dict[str, Any]:
    """Distribution distance to the mixture for each (steps, sampler, shrink, gamma), plus the finite-sample floor."""
    started = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(2)
    comparison = mixture.sample(settings.churn_batch, generator)  # the "data" the sample sets are compared with
    floor_sample = mixture.sample(settings.churn_batch, generator)
    directions = random_directions(mixture.dim, settings.sliced_directions, seed=3, device=device)
    mean, covariance = mixture.mean(), mixture.covariance()

    def distances(samples: torch.Tensor) -> dict[str, float]:
        return {
            "frechet": moment_frechet_distance(samples, mean, covariance),
            "sliced_w2": sliced_wasserstein(samples, comparison, directions),
        }

    y = mixture.sample(settings.churn_batch, generator)
    noise = torch.randn(y.shape, generator=generator, dtype=torch.float64, device=device)
    records = []
    for num_steps in settings.churn_steps:
        for shrink in settings.shrinks:
            denoise = mixture.shrunk_denoiser(shrink)
            for gamma in settings.churn_gammas:
                for family, label, case in churn_cases(gamma, num_steps):
                    if family != "heun" and (num_steps != settings.churn_steps[0]):
                        continue  # the Euler comparison runs at the first step count only
                    sigma_start = start_sigma(case, num_steps)
                    # Same churn noise stream for every sampler and setting.
                    case_kwargs = dict(case.step_kwargs, generator=torch.Generator(device=device).manual_seed(4))
                    case = SamplerCase(case.name, case.group, case.make, case.drive, case.calls_per_step, step_kwargs=case_kwargs)
                    run = run_sampler(case, num_steps, denoise, y + sigma_start * noise, sigma_start, device)
                    records.append(
                        {
                            "steps": num_steps,
                            "nfe": run.nfe,
                            "sampler": label,
                            "family": family,
                            "shrink": shrink,
                            "gamma": gamma,
                            "s_churn": gamma * num_steps,
                            **distances(run.final),
                        }
                    )
    floor = distances(floor_sample)
    return {"records": records, "floor": floor, "seconds": time.perf_counter() - started}


def churn_table(result: dict[str, Any]) -> str:
    """Markdown table: rows (sampler, steps, shrink), columns gamma; cells 'Frechet / sliced W2'."""
    records = result["records"]
    gammas = sorted({r["gamma"] for r in records})
    keys = list(dict.fromkeys((r["sampler"], r["nfe"], r["shrink"]) for r in records))
    headers = ["sampler", "NFE", "shrink"] + [f"gamma {g:.3g}" for g in gammas]
    rows = []
    for sampler, nfe, shrink in keys:
        cells = []
        for gamma in gammas:
            match = [r for r in records if (r["sampler"], r["nfe"], r["shrink"], r["gamma"]) == (sampler, nfe, shrink, gamma)]
            cells.append(f"{match[0]['frechet']:.4f} / {match[0]['sliced_w2']:.4f}" if match else "")
        rows.append([sampler, nfe, shrink, *cells])
    floor = result["floor"]
    rows.append(["exact mixture sample (floor)", "", "", f"{floor['frechet']:.4f} / {floor['sliced_w2']:.4f}"] + [""] * (len(gammas) - 1))
    return markdown_table(headers, rows)


def plot_churn(result: dict[str, Any], path: Path) -> Path | None:
    """Two panels (moment Frechet, sliced W2) vs per-step churn gamma; one line per (sampler, NFE, shrink)."""
    plt = pyplot()
    if plt is None:
        return None
    records = result["records"]
    figure, axes = plt.subplots(1, 2, figsize=(12.5, 4.6))
    keys = list(dict.fromkeys((r["family"], r["sampler"], r["nfe"], r["shrink"]) for r in records))
    shrinks = sorted({r["shrink"] for r in records})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"heun": "-", "euler": "--", "diffusers-euler": ":"}
    nfes = sorted({r["nfe"] for r in records if r["family"] == "heun"})
    for axis, metric, title in zip(axes, ("frechet", "sliced_w2"), ("moment Frechet distance", "sliced Wasserstein-2")):
        for family, sampler, nfe, shrink in keys:
            points = sorted((r["gamma"], r[metric]) for r in records if (r["family"], r["sampler"], r["nfe"], r["shrink"]) == (family, sampler, nfe, shrink))
            marker = "o" if family != "heun" or nfe == nfes[0] else "s"
            axis.plot(
                [g for g, _ in points],
                [v for _, v in points],
                linestyle=styles[family],
                marker=marker,
                markersize=4,
                color=colors[shrinks.index(shrink) % len(colors)],
                label=f"{sampler}, {nfe} NFE, shrink {shrink}",
            )
        axis.axhline(result["floor"][metric], color="gray", linestyle=":", linewidth=1, label="exact mixture sample (floor)")
        axis.set_yscale("log")
        axis.set_xlabel("per-step churn gamma = S_churn / N   (S_tmin 0.05, S_tmax 50)")
        axis.set_title(title, fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle("Churn vs a denoiser shrunk towards the data mean (color: shrink)", fontsize=11)
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------ entry point
@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both parts, print the tables, write ``sampler_accuracy.{md,json,png}`` and ``sampler_churn.png``.

    Returns the measured results (also written to the JSON file) with the paths of what was written.
    """
    args = common_arguments(__doc__.splitlines()[0]).parse_args(argv)
    device = resolve_device(args.device)
    settings = QUICK if args.quick else FULL
    # The workloads are small (batch x 64): one thread avoids oversubscribing a shared CPU and is no slower.
    if device.type == "cpu":
        torch.set_num_threads(1)  # restored on return: main() may run inside a larger process (the tests)
    diffusers_logging.set_verbosity_error()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mixture = GaussianMixture(dim=settings.dim, num_components=settings.num_components, device=device)

    accuracy = measure_ode_accuracy(mixture, settings, device)
    accuracy_md = accuracy_table(accuracy, settings.nfe_targets)
    print(f"\nODE accuracy: RMS error vs reference (data std {mixture.data_std():.3f}; brackets: actual NFE)\n")
    print(accuracy_md)
    churn = measure_churn(mixture, settings, device)
    churn_md = churn_table(churn)
    print("\nChurn with a shrunk denoiser: moment Frechet distance / sliced W2 to the mixture (lower is better)\n")
    print(churn_md)

    machine = machine_description(device)
    accuracy_png = plot_accuracy(accuracy, output_dir / "sampler_accuracy.png")
    churn_png = plot_churn(churn, output_dir / "sampler_churn.png")
    markdown_path = output_dir / "sampler_accuracy.md"
    markdown_path.write_text(
        f"# Sampler accuracy ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device})\n\n"
        f"## ODE accuracy: RMS error vs reference\n\n{accuracy_md}\n\n"
        f"## Churn with a shrunk denoiser: moment Frechet / sliced W2\n\n{churn_md}\n"
    )
    result = {
        "settings": settings.__dict__,
        "machine": machine,
        "quick": args.quick,
        "accuracy": accuracy,
        "churn": churn,
        "files": {
            "markdown": str(markdown_path),
            "accuracy_png": str(accuracy_png) if accuracy_png else None,
            "churn_png": str(churn_png) if churn_png else None,
        },
    }
    write_record(output_dir / "sampler_accuracy.json", result)
    print(f"took {accuracy['seconds']:.1f} s (accuracy) + {churn['seconds']:.1f} s (churn)")
    return result


if __name__ == "__main__":
    main()
