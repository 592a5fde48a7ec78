"""Sampler accuracy vs number of model calls, against an exact reference (issues #6 part 1 and #10).

What is measured:

1. **ODE accuracy.** Data: a Gaussian mixture in 64 dimensions with an exact denoiser ``D(x; sigma)``
   (:mod:`benchmarks.gaussian_mixture`). Every scheduler configuration starts from the same noisy samples
   ``x_0 = y + sigma_0 n`` (same y, same n) at its own largest sigma, integrates down to sigma = 0 with the exact
   model, and is compared with the reference solution of the probability-flow ODE from the same start
   (:mod:`benchmarks.probability_flow_reference`, RK4 in log-sigma, float64). Per (configuration, budget):
   the RMS over samples and coordinates of ``x_final - x_reference``, the median over samples of the per-sample
   RMS, and the fraction of samples whose final point is nearest to a different mixture component than the
   reference's final point (the few samples that switch mode dominate the RMS). The reference recomputed with
   half as many steps gives its own accuracy.
   Budgets (model calls) 5, 6, 8, 10, 12, 15, 20, 25, 35, 50, 80; Heun-type schedulers (2N - 1 calls for N steps)
   run the largest N within the budget, and the actual number of calls is recorded. Two families
   (:mod:`benchmarks.scheduler_adapters`): sigma-native models on EDM's range [0.002, 80] with D outputs, and
   eps-prediction models on Stable Diffusion's noise table; in each, every diffusers scheduler that runs there
   with its sigma / order / final-step options, and the package's schedulers with each solver, grid and option.
   Per family and budget: the best diffusers configuration vs the best package configuration (by RMS).
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
from benchmarks.scheduler_adapters import (
    FAMILIES,
    FAMILY_LABEL,
    FAMILY_START,
    SamplerCase,
    accuracy_cases,
    prepared_scheduler,
    run_sampler,
)
from diffusers_edm import EDMHeunScheduler

BUDGETS = (5, 6, 8, 10, 12, 15, 20, 25, 35, 50, 80)
REFERENCE_NAME = "reference (RK4, half the steps)"
# "About half or less": the package's best RMS at most this fraction of diffusers' best (budgets up to LOW_BUDGET).
HALF = 0.55
# Ratios within this of 1 are ties: the same method as diffusers' best (e.g. iPNDM with variable steps on Karras'
# grid is LMSDiscreteScheduler with Karras sigmas), apart from float32 rounding in diffusers' sigma tables.
TIE = 1e-3
LOW_BUDGET = 15
METRIC_TITLES = (
    ("rms", "RMS error"),
    ("median", "median per-sample RMS error"),
    ("switched", "fraction of samples switching component"),
)


@dataclass(frozen=True)
class AccuracySettings:
    """Sizes of one run (full or ``--quick``)."""

    dim: int
    num_components: int
    batch: int
    reference_steps: int
    budgets: tuple[int, ...]
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
    budgets=BUDGETS,
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
    budgets=(5, 10, 20),
    churn_batch=512,
    churn_steps=(10,),
    churn_gammas=(0.0, 0.1, math.sqrt(2) - 1),
    shrinks=(0.0, 0.03),
    sliced_directions=64,
)


def quick_subset(cases: Sequence[SamplerCase]) -> list[SamplerCase]:
    """The configurations of a ``--quick`` run: every scheduler (and package solver) once or twice, on its Karras / EDM
    grid with the default final-step options, plus every grid of the package's Heun (which the tests compare)."""

    def keep(case: SamplerCase) -> bool:
        options = case.options
        if case.scheduler in ("EDMHeunScheduler", "EDMHeunDiscreteScheduler"):
            return True
        return (
            options.get("sigmas", "karras") == "karras"
            and options.get("grid", "edm") == "edm"
            and options.get("lower_order_final", True) is True
            and options.get("final_sigma", "zero") == "zero"
            and options.get("solver_type", "midpoint") == "midpoint"
        )

    return [case for case in cases if keep(case)]


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference over every sample and coordinate."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean().sqrt())


def sample_errors(
    final: torch.Tensor, reference: torch.Tensor, reference_components: torch.Tensor, mixture: GaussianMixture
) -> dict[str, float]:
    """``rms``: RMS of ``final - reference`` over samples and coordinates; ``median``: median over samples of each
    sample's RMS over coordinates; ``switched``: fraction of samples whose nearest mixture component (by mean) differs
    from the reference's (a non-finite sample counts as switched, and makes ``rms`` infinite)."""
    diff = (final.to(torch.float64) - reference.to(torch.float64)).reshape(final.shape[0], -1)
    per_sample = diff.pow(2).mean(dim=1).sqrt()
    per_sample = torch.where(torch.isfinite(per_sample), per_sample, torch.full_like(per_sample, math.inf))
    switched = mixture.nearest_component(final) != reference_components
    ordered = per_sample.sort().values
    return {
        "rms": float(per_sample.pow(2).mean().sqrt()),
        "median": float(0.5 * (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2])),
        "switched": float(switched.double().mean()),
    }


class ReferenceSolutions:
    """The reference ODE solution from ``x_0 = clean + sigma_0 noise`` for each distinct start ``sigma_0`` (starts
    equal to 1e-6 relative share one solve: float32 and float64 copies of the same table entry)."""

    def __init__(self, mixture: GaussianMixture, clean: torch.Tensor, noise: torch.Tensor, steps: int) -> None:
        self.mixture, self.clean, self.noise, self.steps = mixture, clean, noise, steps
        self.solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        self.seconds = 0.0

    def at(self, sigma_start: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(final state, nearest component of each sample) of the reference from ``sigma_start``."""
        for sigma, solution in self.solutions.items():
            if math.isclose(sigma, sigma_start, rel_tol=1e-6):
                return solution
        started = time.perf_counter()
        final = solve_probability_flow(self.mixture.denoise, self.clean + sigma_start * self.noise, sigma_start, 0.0, self.steps)
        self.solutions[sigma_start] = (final, self.mixture.nearest_component(final))
        self.seconds += time.perf_counter() - started
        return self.solutions[sigma_start]

    def self_error(self, sigma_start: float) -> dict[str, float]:
        """The reference vs the same solve with half the steps: what the tables can resolve."""
        half = solve_probability_flow(self.mixture.denoise, self.clean + sigma_start * self.noise, sigma_start, 0.0, self.steps // 2)
        return {"sigma_start": sigma_start, "nfe": 4 * (self.steps // 2), "rms": rms(half, self.at(sigma_start)[0])}


# ------------------------------------------------------------------------------------------------ part 1
def measure_ode_accuracy(
    mixture: GaussianMixture, settings: AccuracySettings, device: torch.device, cases: Sequence[SamplerCase] | None = None
) -> dict[str, Any]:
    """Errors of every configuration of :func:`accuracy_cases` at every budget, against the RK4 reference."""
    cases = accuracy_cases() if cases is None else cases
    generator = torch.Generator(device=device).manual_seed(1)
    y = mixture.sample(settings.batch, generator)
    noise = torch.randn(y.shape, generator=generator, dtype=torch.float64, device=device)
    references = ReferenceSolutions(mixture, y, noise, settings.reference_steps)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for case in cases:
        case_started = time.perf_counter()
        prototype = case.make()  # built once: some diffusers constructors take a second
        points = []
        for budget in settings.budgets:
            point: dict[str, Any] = {"budget": budget}
            try:
                scheduler = prepared_scheduler(case, case.steps_for_nfe(budget), prototype, device)
                if len(scheduler.timesteps) > budget:
                    raise RuntimeError(f"{len(scheduler.timesteps)} model calls exceed the budget")
                run = run_sampler(case, scheduler, mixture.denoise, y, noise, device)
                reference, components = references.at(run.sigma_start)
                point.update(nfe=run.nfe, sigma_start=run.sigma_start, sigma_mismatch=run.sigma_mismatch,
                             **sample_errors(run.final, reference, components, mixture))
            except Exception as error:  # a configuration diffusers cannot run at this budget: recorded, never best
                point.update(nfe=None, rms=math.inf, median=math.inf, switched=1.0, failure=f"{type(error).__name__}: {error}"[:200])
            points.append(point)
        rows.append({
            "name": case.name, "group": case.group, "provider": case.provider, "scheduler": case.scheduler,
            "options": case.options, "candidate": case.candidate, "points": points,
            "seconds": time.perf_counter() - case_started,
        })
    reference_self = {group: references.self_error(FAMILY_START[group]) for group in dict.fromkeys(r["group"] for r in rows)}
    return {
        "rows": rows,
        "reference": reference_self,
        "reference_steps": settings.reference_steps,
        "reference_seconds": references.seconds,
        "seconds": time.perf_counter() - started,
    }


def _best(rows: Sequence[dict[str, Any]], budget: int, sigma_start: float, metric: str = "rms") -> dict[str, Any] | None:
    """The candidate row with the smallest ``metric`` at ``budget`` among the runs that start at ``sigma_start`` (the
    family's top: a grid that starts lower solves an easier problem), with its point; or None."""
    scored = [(point[metric], row, point) for row in rows if row["candidate"] for point in row["points"]
              if point["budget"] == budget and math.isclose(point.get("sigma_start", math.nan), sigma_start, rel_tol=1e-6)]
    scored = [s for s in scored if math.isfinite(s[0])]
    if not scored:
        return None
    _, row, point = min(scored, key=lambda s: s[0])
    metrics = {k: point[k] for k in ("nfe", "rms", "median", "switched")}
    return {"name": row["name"], "scheduler": row["scheduler"], "options": row["options"], **metrics}


def summarize(result: dict[str, Any], budgets: Sequence[int]) -> dict[str, Any]:
    """Per family and budget: the best diffusers and package configurations (by RMS) and the ratios package /
    diffusers of their RMS and median errors; the best package configuration of each solver; the ``auto`` row."""
    summary: dict[str, Any] = {}
    for group in FAMILIES:
        rows = [r for r in result["rows"] if r["group"] == group]
        start = FAMILY_START[group]
        diffusers_rows = [r for r in rows if r["provider"] == "diffusers"]
        package_rows = [r for r in rows if r["provider"] == "package"]
        auto_rows = [r for r in package_rows if not r["candidate"]]
        entries = []
        for budget in budgets:
            diffusers_best, package_best = _best(diffusers_rows, budget, start), _best(package_rows, budget, start)
            entry: dict[str, Any] = {"budget": budget, "diffusers": diffusers_best, "package": package_best}
            if diffusers_best and package_best:
                entry["rms_ratio"] = package_best["rms"] / diffusers_best["rms"]
                entry["median_ratio"] = package_best["median"] / diffusers_best["median"]
            entry["best_median"] = {
                "diffusers": _best(diffusers_rows, budget, start, "median"), "package": _best(package_rows, budget, start, "median")
            }
            entry["per_scheduler"] = {}
            for family in dict.fromkeys(r["scheduler"] for r in package_rows if r["candidate"]):
                entry["per_scheduler"][family] = _best([r for r in package_rows if r["scheduler"] == family], budget, start)
            if auto_rows:
                point = next(p for p in auto_rows[0]["points"] if p["budget"] == budget)
                entry["auto"] = {k: point.get(k) for k in ("nfe", "rms", "median", "switched")}
            entries.append(entry)
        ratios = [(e["budget"], e.get("rms_ratio")) for e in entries if e.get("rms_ratio") is not None]
        summary[group] = {
            "budgets": entries,
            "package_at_or_below": [b for b, r in ratios if r <= 1.0 + TIE],
            "package_above": [b for b, r in ratios if r > 1.0 + TIE],
            "about_half_or_less": [b for b, r in ratios if b <= LOW_BUDGET and r <= HALF],
            "not_half_at_low_budgets": [b for b, r in ratios if b <= LOW_BUDGET and r > HALF],
        }
    return summary


def _e(value: float | None, digits: int = 2) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}e}" if math.isfinite(value) else "failed"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def short_config(best: dict[str, Any] | None) -> str:
    """``Class(options)`` with the class name shortened for the summary tables."""
    if best is None:
        return "-"
    return best["name"].replace("Scheduler(", "(")


def summary_table(group_summary: dict[str, Any]) -> str:
    """Markdown: per budget, the best diffusers and package configurations, their errors and the ratios."""
    headers = ["calls", "best diffusers config", "RMS", "median", "switched", "best package config", "RMS", "median",
               "switched", "RMS ratio", "median ratio", "package auto RMS"]
    rows = []
    for e in group_summary["budgets"]:
        d, p = e["diffusers"] or {}, e["package"] or {}

        def calls(best: dict[str, Any]) -> str:
            return "" if not best or best.get("nfe") in (None, e["budget"]) else f" ({best['nfe']} calls)"

        auto = e.get("auto") or {}
        rows.append([
            e["budget"], short_config(e["diffusers"]) + calls(d), _e(d.get("rms")), _e(d.get("median")), _pct(d.get("switched")),
            short_config(e["package"]) + calls(p), _e(p.get("rms")), _e(p.get("median")), _pct(p.get("switched")),
            f"{e['rms_ratio']:.2f}" if "rms_ratio" in e else "", f"{e['median_ratio']:.2f}" if "median_ratio" in e else "",
            _e(auto.get("rms")),
        ])
    return markdown_table(headers, rows)


def solver_table(group_summary: dict[str, Any]) -> str:
    """Markdown: per budget, the best package configuration of each solver (and Heun) with its RMS."""
    families = list(group_summary["budgets"][0]["per_scheduler"])
    headers = ["calls"] + families
    rows = []
    for e in group_summary["budgets"]:
        cells = []
        for family in families:
            best = e["per_scheduler"][family]
            if best is None:
                cells.append("-")
                continue
            options = ", ".join(f"{k}={v}" for k, v in best["options"].items() if k != "solver")
            cells.append(f"{_e(best['rms'])} ({options})")
        rows.append([e["budget"], *cells])
    return markdown_table(headers, rows)


def cross_family(result: dict[str, Any], summary: dict[str, Any], budgets: Sequence[int]) -> list[dict[str, Any]]:
    """Per budget, the package's configuration (solver, order, AFS, grid, lower_order_final: the same options on both
    families' schedulers) whose worst ratio to diffusers' best RMS over the two families is smallest: a candidate for
    a default that holds for sigma-native and discrete models alike."""
    ratios: dict[str, dict[tuple[str, int], float]] = {}
    options_of: dict[str, dict[str, Any]] = {}
    for row in result["rows"]:
        if row["provider"] != "package" or not row["candidate"] or "solver" not in row["options"]:
            continue
        key = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        options_of[key] = row["options"]
        for point, entry in zip(row["points"], summary[row["group"]]["budgets"]):
            start_ok = math.isclose(point.get("sigma_start", math.nan), FAMILY_START[row["group"]], rel_tol=1e-6)
            if entry["diffusers"] and start_ok:
                ratios.setdefault(key, {})[(row["group"], point["budget"])] = point["rms"] / entry["diffusers"]["rms"]
    entries = []
    for budget in budgets:
        scored = [
            (max(r[(group, budget)] for group in FAMILIES), key)
            for key, r in ratios.items() if all((group, budget) in r for group in FAMILIES)
        ]
        scored = [item for item in scored if math.isfinite(item[0])]
        if not scored:
            continue
        worst, key = min(scored)
        entries.append({"budget": budget, "options": options_of[key], "worst_ratio": worst,
                        "ratios": {group: ratios[key][(group, budget)] for group in FAMILIES}})
    return entries


def cross_family_table(entries: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`cross_family`."""
    headers = ["calls", "package configuration (both families)"] + [f"RMS ratio, {FAMILY_LABEL[group]}" for group in FAMILIES] + ["worst"]
    rows = [
        [
            e["budget"],
            ", ".join(f"{k}={v}" for k, v in e["options"].items()),
            *(f"{e['ratios'][g]:.2f}" for g in FAMILIES),
            f"{e['worst_ratio']:.2f}",
        ]
        for e in entries
    ]
    return markdown_table(headers, rows)


def verdict(group: str, group_summary: dict[str, Any]) -> list[str]:
    """Plain sentences: where the package's best is at or below diffusers' best, about half or less, and not."""
    entries = {e["budget"]: e for e in group_summary["budgets"]}

    def listing(budgets: Sequence[int]) -> str:
        return ", ".join(f"{b} ({entries[b]['rms_ratio']:.2f})" for b in budgets) or "none"

    return [
        f"{group}: package best RMS / diffusers best RMS (ratio in brackets)",
        f"  <= diffusers' best (a ratio within {TIE:g} of 1 is a tie) at calls: {listing(group_summary['package_at_or_below'])}",
        f"  WORSE than diffusers' best at calls: {listing(group_summary['package_above'])}",
        f"  about half or less (ratio <= {HALF}) at calls <= {LOW_BUDGET}: {listing(group_summary['about_half_or_less'])}",
        f"  NOT about half at calls <= {LOW_BUDGET}: {listing(group_summary['not_half_at_low_budgets'])}",
    ]


def full_table(result: dict[str, Any], group: str, budgets: Sequence[int], metric: str) -> str:
    """Markdown: one row per configuration of ``group``, one column per budget (actual calls in brackets)."""
    fmt = _pct if metric == "switched" else _e
    headers = ["configuration", "sigma_max"] + [f"{b} calls" for b in budgets]
    if metric == "rms":
        headers.append("max sigma mismatch")
    rows = []
    for row in (r for r in result["rows"] if r["group"] == group):
        cells = []
        for p in row["points"]:
            if p.get("failure"):
                cells.append("failed")
            else:
                cells.append(fmt(p[metric]) + ("" if p["nfe"] == p["budget"] else f" ({p['nfe']})"))
        starts = [p["sigma_start"] for p in row["points"] if "sigma_start" in p]
        extra = [f"{max((p.get('sigma_mismatch', 0.0) for p in row['points']), default=0.0):.1e}"] if metric == "rms" else []
        rows.append([row["name"], f"{starts[0]:.4g}" if starts else "", *cells, *extra])
    return markdown_table(headers, rows)


def plot_accuracy(result: dict[str, Any], path: Path) -> Path | None:
    """Log-log error vs model calls: one column per family, rows RMS / median / fraction switched; one line per
    family of configurations (scheduler class, and solver for the package), the best of its configurations at
    each budget among those starting at the family's top; the package solid, diffusers dashed."""
    plt = pyplot()
    if plt is None:
        return None
    metrics = (
        ("rms", "RMS error vs reference"),
        ("median", "median per-sample RMS error"),
        ("switched", "fraction of samples switching component"),
    )
    figure, axes = plt.subplots(len(metrics), len(FAMILIES), figsize=(7.0 * len(FAMILIES), 4.4 * len(metrics)), squeeze=False)
    tab20 = plt.get_cmap("tab20").colors
    diffusers_colors = tab20[0::2] + tab20[1::2]
    package_colors = ("black", "crimson", "mediumblue", "gold", "darkgreen")
    markers = "osD^v<>ph*xP+"
    floor = 0.5 / result["batch"]
    budgets = [p["budget"] for p in result["rows"][0]["points"]]
    for column, group in enumerate(FAMILIES):
        rows = [r for r in result["rows"] if r["group"] == group and r["candidate"]]
        families = list(dict.fromkeys(r["scheduler"] for r in rows))
        for row_index, (metric, label) in enumerate(metrics):
            axis = axes[row_index][column]
            package_families = [f for f in families if any(r["provider"] == "package" for r in rows if r["scheduler"] == f)]
            diffusers_families = [f for f in families if f not in package_families]
            for index, family in enumerate(families):
                members = [r for r in rows if r["scheduler"] == family]
                package = members[0]["provider"] == "package"
                color = (package_colors[package_families.index(family) % len(package_colors)] if package
                         else diffusers_colors[diffusers_families.index(family) % len(diffusers_colors)])
                xs, ys = [], []
                for i in range(len(members[0]["points"])):
                    points = [m["points"][i] for m in members if "failure" not in m["points"][i]
                              and math.isfinite(m["points"][i][metric])
                              and math.isclose(m["points"][i]["sigma_start"], FAMILY_START[group], rel_tol=1e-6)]
                    if points:
                        best = min(points, key=lambda p: p[metric])
                        xs.append(best["nfe"])
                        ys.append(max(best[metric], floor if metric == "switched" else 1e-16))
                axis.loglog(xs, ys, marker=markers[index % len(markers)], color=color,
                            linestyle="-" if package else "--", linewidth=2.2 if package else 1.1, markersize=4, label=family)
            axis.set_title(f"{group}:\n{label}", fontsize=9)
            axis.set_xlabel("model calls")
            axis.set_ylabel(label + (f" (0 drawn at {floor:.0e})" if metric == "switched" else ""), fontsize=8)
            axis.set_xticks(budgets)
            axis.set_xticklabels([str(b) for b in budgets], fontsize=7)
            axis.minorticks_off()
            axis.grid(True, which="major", alpha=0.3)
            if row_index == 0:
                axis.legend(fontsize=6, ncol=2)
    figure.suptitle("Probability-flow ODE accuracy, 64-D Gaussian mixture, exact denoiser: best configuration of each "
                    "scheduler (package solid, diffusers dashed)", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
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
                    # Same churn noise stream for every sampler and setting.
                    case_kwargs = dict(case.step_kwargs, generator=torch.Generator(device=device).manual_seed(4))
                    case = SamplerCase(case.name, case.group, case.make, case.drive, case.calls_per_step, step_kwargs=case_kwargs)
                    run = run_sampler(case, prepared_scheduler(case, num_steps, device=device), denoise, y, noise, device)
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

    cases = accuracy_cases()
    accuracy = measure_ode_accuracy(mixture, settings, device, quick_subset(cases) if args.quick else cases)
    accuracy["batch"] = settings.batch
    summary = summarize(accuracy, settings.budgets)
    accuracy["summary"] = summary
    sections, verdicts = [], []
    for group in FAMILIES:
        reference = accuracy["reference"].get(group)
        reference_line = (
            f"Reference's own error (RK4 with half the steps, from sigma {reference['sigma_start']:.4g}): {reference['rms']:.1e}."
            if reference else ""
        )
        verdicts += verdict(group, summary[group])
        sections.append(
            f"### {group}\n\n{reference_line}\n\nBest configuration per budget (by RMS; ratios: package / diffusers, of the two "
            f"configurations shown; 'switched': samples ending nearest to another component than the reference):\n\n"
            f"{summary_table(summary[group])}\n\nBest package configuration of each solver (RMS):\n\n{solver_table(summary[group])}\n"
        )
    accuracy["cross_family"] = cross_family(accuracy, summary, settings.budgets)
    sections.append(
        "### One package configuration for both families\n\nPer budget, the configuration whose worst ratio (package RMS / "
        "diffusers' best RMS) over the two families is smallest:\n\n" + cross_family_table(accuracy["cross_family"]) + "\n"
    )
    print(f"\nODE accuracy (data std {mixture.data_std():.3f}; {len(accuracy['rows'])} configurations)\n")
    print("\n".join(sections))
    print("\n".join(verdicts))
    churn = measure_churn(mixture, settings, device)
    churn_md = churn_table(churn)
    print("\nChurn with a shrunk denoiser: moment Frechet distance / sliced W2 to the mixture (lower is better)\n")
    print(churn_md)

    machine = machine_description(device)
    accuracy_png = plot_accuracy(accuracy, output_dir / "sampler_accuracy.png")
    churn_png = plot_churn(churn, output_dir / "sampler_churn.png")
    markdown_path = output_dir / "sampler_accuracy.md"
    full_tables = []
    for group in FAMILIES:
        for metric, title in METRIC_TITLES:
            full_tables.append(f"### {group}: {title}\n\n{full_table(accuracy, group, settings.budgets, metric)}\n")
    markdown_path.write_text(
        f"# Sampler accuracy ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device}, "
        f"{machine['platform']}, torch {machine['torch']}, diffusers {machine.get('diffusers')})\n\n"
        f"Batch {settings.batch}, {settings.dim}-D, {settings.num_components} components; reference RK4 with "
        f"{settings.reference_steps} steps; accuracy part {accuracy['seconds']:.0f} s, churn part {churn['seconds']:.0f} s.\n\n"
        "## ODE accuracy: summary\n\n" + "\n".join(sections) + "\n```\n" + "\n".join(verdicts) + "\n```\n\n"
        "## ODE accuracy: every configuration\n\n(actual calls in brackets where fewer than the budget)\n\n"
        + "\n".join(full_tables)
        + f"\n## Churn with a shrunk denoiser: moment Frechet / sliced W2\n\n{churn_md}\n"
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
    print(
        f"took {accuracy['seconds']:.1f} s (accuracy, of which {accuracy['reference_seconds']:.1f} s references) "
        f"+ {churn['seconds']:.1f} s (churn)"
    )
    return result


if __name__ == "__main__":
    main()
