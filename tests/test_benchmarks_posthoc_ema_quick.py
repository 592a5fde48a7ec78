"""The post-hoc EMA benchmark (issue #12) in ``--quick`` mode: it runs, writes its outputs and gives sane numbers.

A quick run is far too small to judge quality; this keeps the script from rotting and checks that the sweep is
complete: every std either reconstructed and scored, or refused with the reason. The full run's results are in
``benchmarks/README.md`` (part 7).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from benchmarks import posthoc_ema  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_posthoc_ema_benchmark_sweeps_the_stds_against_both_baselines(tmp_path: Path) -> None:
    result = posthoc_ema.main(["--quick", "--output-dir", str(tmp_path)])
    files = result["files"]
    table = Path(files["markdown"]).read_text()
    assert "std (sigma_rel)" in table and "EDM2 loss" in table and "refused" in table
    assert json.loads(Path(files["json"]).read_text())["quick"] is True
    if HAS_MATPLOTLIB:
        assert Path(files["png"]).read_bytes()[:8] == PNG_MAGIC

    rows = {row["std"]: row for row in result["sweep"]}
    assert set(rows) == set(posthoc_ema.QUICK.stds)
    for std in (0.06, 0.08):
        row = rows[std]
        assert row["profile_error"] <= 0.1 and row["n_img"] == 8 * 16
        assert math.isfinite(row["frechet"]) and row["frechet"] > 0 and 0 <= row["accuracy"] <= 1
    assert "cannot be reconstructed" in rows[0.25]["refused"]
    assert len(result["baselines"]) == 3
    for scores in result["baselines"].values():
        assert math.isfinite(scores["frechet"]) and scores["frechet"] > 0
