"""The ablation report's protocol v2 decision rule (docs/RESULTS.md) on constructed rows, and its section end to
end on a results file: 'reproduces' needs joint below baseline in every seed by more than 2 standard errors of
the difference on the primary endpoint; 'mechanism only' the same on a secondary one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import ablation_report as report  # noqa: E402


def test_beats_needs_every_seed_and_two_standard_errors():
    assert report.beats([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert not report.beats([1.0, 1.1, 2.5], [2.0, 2.1, 2.4])  # one seed not below its pair
    # below in every seed, but the spread swamps the gap: difference 0.2, its standard error about 0.5
    assert not report.beats([1.0, 2.0, 0.4], [1.1, 2.2, 0.7])
    assert not report.beats([1.0], [])


def _row(variant: str, fids: list[float]) -> dict:
    return {"protocol": "v2", "dataset": "shapes", "variant": variant, "seed": 0, "tok_steps": 3000, "gamma": 3.0,
            "mask_ratio": 0.7, "rfid": 10.0, "psnr": 20.0, "stage1": {"psnr": 19.5}, "decoder_ft_steps": 400,
            "generators": {"sit": {"seeds": [{"fid": f, "class_accuracy": 0.1} for f in fids]}}}


def _secondary(latent_fd: list[float], excess: list[float]) -> dict:
    return {"perfect_fid": 20.0, "ifid": 25.0,
            "cells": {f"sit-g{i}": {"latent_fd": d, "excess_fid": e} for i, (d, e) in enumerate(zip(latent_fd, excess))}}


def test_verdict_follows_the_decision_rule():
    base, joint = _row("baseline", [17.6, 17.5, 17.4]), _row("joint", [45.6, 45.8, 44.8])
    sec = {"shapes/baseline-s0-t3000": _secondary([2.6, 2.5, 2.5], [-2.0, -2.1, -2.2])}
    assert report.verdict([base, joint], sec, "sit", "shapes").endswith("secondary endpoints not computed")
    sec["shapes/joint-s0-t3000"] = _secondary([0.8, 0.7, 0.9], [-2.0, -2.1, -2.2])  # latent FD only
    assert report.verdict([base, joint], sec, "sit", "shapes") == "mechanism only (latent_fd)"
    sec["shapes/joint-s0-t3000"] = _secondary([2.7, 2.6, 2.6], [-1.0, -1.1, -1.2])
    assert report.verdict([base, joint], sec, "sit", "shapes") == "does not reproduce"
    better = _row("joint", [15.0, 15.1, 14.9])
    assert report.verdict([base, better], sec, "sit", "shapes") == "reproduces"


def test_v2_section_and_figure_from_a_results_file(tmp_path):
    src = tmp_path / "ablation.json"
    rows = [_row("baseline", [17.6, 17.5, 17.4]), _row("joint", [45.6, 45.8, 44.8])]
    src.write_text(json.dumps({"rows": rows, "protocols": {"v2": {"image_size": 16, "latent_dim": 4}}}))
    (tmp_path / "ablation_secondary.json").write_text(json.dumps({
        "shapes/baseline-s0-t3000": _secondary([2.6, 2.5, 2.5], [-2.0, -2.1, -2.2]),
        "shapes/joint-s0-t3000": _secondary([0.8, 0.7, 0.9], [-5.0, -5.1, -5.2])}))
    report.main(["--results", str(src)])
    md = (tmp_path / "ablation.md").read_text()
    assert "| joint | 3 | 0.7 | 19.50 → 20.00 | 10.0 | 45.40 ± 0.31 |" in md
    assert "mechanism only (excess_fid, latent_fd)" in md and "latent 4x4x4" in md
    assert (tmp_path / "ablation_v2.png").stat().st_size > 10_000
    assert not (tmp_path / "ablation_fid.png").exists()  # no v1 rows: no v1 figures
