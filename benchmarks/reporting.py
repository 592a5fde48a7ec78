"""Tables, JSON records, plots and the command-line options every benchmark script shares."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
import functools
from typing import Any, Callable, Sequence

import torch
from diffusers.utils import logging as diffusers_logging

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "results"


def common_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: ``--quick``, ``--device``, ``--output-dir``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny settings that run in seconds (used by the tests)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where tensors live (default cpu)")
    parser.add_argument(
        "--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help=f"where tables and plots go (default {DEFAULT_OUTPUT_DIR})"
    )
    return parser


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, with a clear error when CUDA is asked for but absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was given but torch.cuda.is_available() is False.")
    return torch.device(name)


def start_run(args: argparse.Namespace) -> tuple[torch.device, Path]:
    """The device of ``--device`` and the created ``--output_dir`` of a benchmark's ``main``; on the CPU one torch
    thread (two oneDNN threads on a loaded 2-core CPU stall badly; :func:`restores_torch_threads` undoes it on return)
    and diffusers' logging at errors only (no progress-bar noise in the tables)."""
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return device, output_dir


def machine_description(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on (recorded next to them; timings are only comparable within one run)."""
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover - diffusers is a dependency of the package
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table with the columns padded to a common width (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(value.ljust(width) for value, width in zip(row, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), separator] + [line(row) for row in cells[1:]])


#: Paths inside the repository are recorded relative to it, so that a record reads the same from any checkout.
REPOSITORY_PREFIX = str(Path(__file__).resolve().parent.parent) + os.sep


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (non-finite floats become strings so the file stays valid JSON; paths in
    the repository become relative to it)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            return str(value)
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str):
            return value.replace(REPOSITORY_PREFIX, "")
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(payload), indent=2) + "\n")


def pyplot():
    """matplotlib's pyplot with the non-interactive Agg backend, or None when matplotlib is not installed.

    matplotlib is not a dependency of the package; without it the benchmarks still measure, print and record
    their tables, and only skip the PNG.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the PNG plot (pip install matplotlib).")
        return None
    return plt


def save_figure(figure: Any, path: Path) -> Path:
    """Save a matplotlib figure as a small PNG (modest dpi: the PNGs are committed) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, bbox_inches="tight")
    figure.clear()
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def restores_torch_threads(run: Callable[[Sequence[str] | None], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Wrap a benchmark's ``main(argv)``: it may set torch's thread count for its measurements, and the tests call
    it in-process, so the caller's thread count is restored afterwards."""

    @functools.wraps(run)
    def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
        threads = torch.get_num_threads()
        try:
            return run(argv)
        finally:
            torch.set_num_threads(threads)

    return main


def write_record(json_path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write a benchmark's JSON record (adding its own path to ``result["files"]``), print every file the run wrote,
    and return ``result``."""
    result.setdefault("files", {})["json"] = str(json_path)
    write_json(json_path, result)
    written = []
    for value in result["files"].values():
        if isinstance(value, dict):
            value = list(value.values())
        written += value if isinstance(value, list) else [value] if value else []
    print("wrote " + ", ".join(str(path) for path in written))
    return result
