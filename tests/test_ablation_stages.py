"""The ablation driver's caches are keyed by the settings that produced them: a rerun into the same folder with
other settings is refused (one line, exit 2) instead of reporting old rows under new settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import ablation  # noqa: E402


def test_check_stage_records_then_refuses_other_settings(tmp_path):
    ablation.check_stage(tmp_path / "s", {"latent_dim": 4, "steps": 3})
    ablation.check_stage(tmp_path / "s", {"steps": 3, "latent_dim": 4})  # the same settings: reused
    with pytest.raises(ablation.StageMismatch, match=r"latent_dim: cached 4, asked 8"):
        ablation.check_stage(tmp_path / "s", {"latent_dim": 8, "steps": 3})
    assert json.loads((tmp_path / "s" / ablation.STAGE_FILE).read_text()) == {"latent_dim": 4, "steps": 3}


def test_save_rows_adds_generators_to_a_row_and_replaces_what_was_rerun(tmp_path):
    path = tmp_path / "ablation.json"
    row = {"protocol": "v2", "dataset": "shapes", "variant": "joint", "seed": 0, "tok_steps": 3000, "psnr": 20.0}
    ablation.save_rows(path, [{**row, "generators": {"sit": {"fid": 45.6}}}], {"protocol": "v2"})
    ablation.save_rows(path, [{**row, "psnr": 20.5, "generators": {"mar": {"fid": 70.1}}}], {"protocol": "v2"})
    other = {**row, "variant": "baseline", "generators": {"sit": {"fid": 17.6}}}
    ablation.save_rows(path, [other], {"protocol": "v2"})
    ablation.save_rows(path, [{**row, "generators": {"sit": {"fid": 44.0}}}], {"protocol": "v2"})
    rows = {r["variant"]: r for r in json.loads(path.read_text())["rows"]}
    assert rows["joint"]["generators"] == {"sit": {"fid": 44.0}, "mar": {"fid": 70.1}}  # rerun sit replaced, mar kept
    assert rows["joint"]["psnr"] == 20.0 and rows["baseline"]["generators"] == {"sit": {"fid": 17.6}}
    assert [r["variant"] for r in json.loads(path.read_text())["rows"]] == ["baseline", "joint"]  # the grid's order


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / "ablation.py"), "--quick", "--threads", "2", "--out", str(out), "--data", "",
           "--extra", "shapes:baseline:0", "--generators", "sit", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DETOK_CACHE": str(out / "cache")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_rerun_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "abl"
    first = _run(out)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    again = _run(out)  # the same settings: every stage reused, the same row
    assert again.returncode == 0 and json.loads((out / "ablation.json").read_text())["rows"] == rows
    for flag, value, key in (("--latent-dim", "8", "latent_dim"), ("--image-size", "32", "image_size"),
                             ("--gen-steps", "5", "steps")):
        bad = _run(out, flag, value)
        lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("ablation.py:")]
        assert bad.returncode == 2 and len(lines) == 1 and key in lines[0], bad.stderr[-2000:]
    assert json.loads((out / "ablation.json").read_text())["rows"] == rows  # nothing reported under new settings


@pytest.mark.slow
def test_v2_mitigation_row_and_its_mechanism_endpoints(tmp_path):
    """Protocol v2 end to end at --quick sizes: the joint_anneal mitigation row trains its tokenizer with the
    corruption faded out over the last third, and --secondary adds the mechanism endpoints of the finished row:
    excess FID is the cell's final FID minus the perfect-generator FID, at the primary endpoint's n."""
    out = tmp_path / "abl"
    v2 = ("--protocol", "v2", "--gen-seeds", "0")
    first = _run(out, *v2, "--extra", "shapes:joint_anneal:0")  # the later --extra wins over _run's
    assert first.returncode == 0, first.stderr[-3000:]
    (row,) = json.loads((out / "ablation.json").read_text())["rows"]
    assert row["variant"] == "joint_anneal" and row["protocol"] == "v2"
    assert row["corruption_anneal"] == pytest.approx(1 / 3) and row["gamma"] == 3.0 and row["mask_ratio"] == 0.7
    stage = json.loads((out / "shapes" / "v2" / "joint_anneal-s0-t3" / ablation.STAGE_FILE).read_text())
    assert stage["corruption_anneal"] == pytest.approx(1 / 3)

    second = _run(out, *v2, "--secondary")
    assert second.returncode == 0, second.stderr[-3000:]
    sec = json.loads((out / "ablation_secondary.json").read_text())["shapes/joint_anneal-s0-t3"]
    cell = row["generators"]["sit"]
    assert sec["n"] == cell["n"] == 64  # the same n as the primary endpoint's final FID
    assert sec["perfect_fid"] > 0 and sec["ifid"] > 0
    assert sec["cells"]["sit-g0"]["cfg"] == cell["cfg"]
    assert sec["cells"]["sit-g0"]["excess_fid"] == pytest.approx(cell["fid"] - sec["perfect_fid"])
    assert sec["cells"]["sit-g0"]["latent_fd"] >= 0

    # MAR joins the finished SiT row: the row keeps its SiT cell, --secondary adds only the new cell's endpoints
    third = _run(out, *v2, "--extra", "shapes:joint_anneal:0", "--generators", "mar")
    assert third.returncode == 0, third.stderr[-3000:]
    (both,) = json.loads((out / "ablation.json").read_text())["rows"]
    assert both["generators"]["sit"] == row["generators"]["sit"] and "mar" in both["generators"]
    fourth = _run(out, *v2, "--secondary")
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    again = json.loads((out / "ablation_secondary.json").read_text())["shapes/joint_anneal-s0-t3"]
    assert again["cells"]["sit-g0"] == sec["cells"]["sit-g0"] and again["perfect_fid"] == sec["perfect_fid"]
    assert again["cells"]["mar-g0"]["excess_fid"] == pytest.approx(both["generators"]["mar"]["fid"] - sec["perfect_fid"])
