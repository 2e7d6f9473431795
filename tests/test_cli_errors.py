"""Bad input through the real CLI (a subprocess each): exit 2, ONE line on stderr naming the key / file /
problem, no traceback, and the run folder unchanged where it must be. One table, one test per row.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOK = ["train", "tokenizer", "--config", "tokenizer_tiny"]
GEN = ["train.max_steps=2", "train.global_batch_size=8", "train.progress=false", "sample.per_class=0"]


def detok(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("DETOK_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "detok.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


class Evil:
    """A pickle that creates a file when loaded: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def folder_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("errs")
    assert detok(*TOK, "--out", str(root / "tok")).returncode == 0
    out = detok("train", "generator", "--model", "sit_tiny", "--tokenizer", str(root / "tok"), "--out",
                str(root / "gen"), *GEN)
    assert out.returncode == 0, out.stderr
    evil = root / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": Evil(root / "PWNED")}, f)
    (root / "bad.yaml").write_text("train:\n  max_steps: [1, 2\n")
    (root / "a_file").write_text("not a folder\n")
    truncated = root / "truncated"
    shutil.copytree(root / "tok", truncated)
    ckpt = sorted((truncated / "checkpoints").glob("step-*"))[-1]
    for name in ("weights.safetensors", "ema.safetensors"):
        data = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(data[: len(data) // 3])
    poisoned = root / "poisoned"
    shutil.copytree(root / "tok", poisoned)
    for ck in (poisoned / "checkpoints").glob("step-*"):
        with open(ck / "state.pt", "wb") as f:
            pickle.dump({"step": 2, "evil": Evil(root / "PWNED")}, f)
    return {"root": root, "tok": root / "tok", "gen": root / "gen", "evil": evil, "truncated": truncated,
            "poisoned": poisoned}


# (id, argv with {placeholders}, words the one line must contain)
CASES = [
    ("yaml-syntax", [*TOK, "--config", "{root}/bad.yaml", "--out", "{tmp}/x"], ["bad.yaml", "YAML", "line"]),
    ("unknown-key", [*TOK, "--out", "{tmp}/x", "train.max_stepz=3"], ["train.max_stepz", "unknown"]),
    ("bad-type", [*TOK, "--out", "{tmp}/x", "train.max_steps=abc"], ["train.max_steps", "integer"]),
    ("unknown-tokenizer", ["train", "tokenizer", "--model", "detok_zz", "--out", "{tmp}/x"], ["detok_zz"]),
    ("unknown-generator", ["train", "generator", "--model", "sti_tiny", "--tokenizer", "{tok}", "--out", "{tmp}/x"],
     ["sti_tiny", "sit_tiny"]),
    ("batch-0", [*TOK, "--out", "{tmp}/x", "train.global_batch_size=0"], ["train.global_batch_size", "minimum"]),
    ("batch-negative", [*TOK, "--out", "{tmp}/x", "train.global_batch_size=-8"], ["train.global_batch_size"]),
    ("ckpt-every-0", [*TOK, "--out", "{tmp}/x", "train.ckpt_every=0"], ["train.ckpt_every", "minimum"]),
    ("log-every-0", [*TOK, "--out", "{tmp}/x", "train.log_every=0"], ["train.log_every", "minimum"]),
    ("max-steps-negative", [*TOK, "--out", "{tmp}/x", "train.max_steps=-5"], ["train.max_steps", "minimum"]),
    ("ema-above-1", [*TOK, "--out", "{tmp}/x", "train.ema_decay=1.5"], ["train.ema_decay", "maximum"]),
    ("batch-larger-than-data", [*TOK, "--out", "{tmp}/x", "train.global_batch_size=4096"], ["global batch"]),
    ("out-is-a-file", [*TOK, "--out", "{root}/a_file"], ["a_file"]),
    ("missing-run", ["encode", "{tmp}/nope", "--out", "{tmp}/c"], ["nope"]),
    ("truncated-encode", ["encode", "{truncated}", "--out", "{tmp}/c", "--num-workers", "0"],
     ["safetensors", "truncated"]),
    ("truncated-reconstruct", ["reconstruct", "{truncated}", "-n", "4"], ["safetensors", "truncated"]),
    ("truncated-resume", [*TOK, "--out", "{truncated}", "--resume"], ["safetensors", "truncated"]),
    ("evil-convert", ["convert", "{evil}", "{tmp}/conv"], ["evil.pth", "plain tensors"]),
    ("evil-encode", ["encode", "{evil}", "--out", "{tmp}/c"], ["evil.pth", "plain tensors"]),
    ("evil-reconstruct", ["reconstruct", "{evil}"], ["evil.pth", "plain tensors"]),
    ("evil-generator-tokenizer", ["train", "generator", "--model", "sit_tiny", "--tokenizer", "{evil}", "--out",
                                  "{tmp}/x", *GEN], ["evil.pth", "plain tensors"]),
    ("evil-init-from", [*TOK, "--out", "{tmp}/x", "init_from={evil}"], ["evil.pth", "plain tensors"]),
    ("poisoned-resume", [*TOK, "--out", "{poisoned}", "--resume"], ["state.pt", "plain tensors"]),
    ("resume-other-model", ["train", "tokenizer", "--model", "detok_mini", "--config", "tokenizer_tiny",
                            "--out", "{tok}", "--resume"], ["detok_tiny", "detok_mini"]),
    ("resume-generator-as-tokenizer", [*TOK, "--out", "{gen}", "--resume"], ["generator", "tokenizer"]),
    ("sample-generator-is-tokenizer", ["sample", "{tok}", "-n", "2"], ["tokenizer", "not a generator"]),
    ("sample-zero", ["sample", "{gen}", "-n", "0"], ["num-images"]),
    ("evaluate-unknown-key", ["evaluate", "{gen}", "n_finall=3"], ["n_finall"]),
    ("head-steps-on-sit", ["sample", "{gen}", "-n", "2", "--head-steps", "3"], ["head_steps"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(case, runs, tmp_path):
    name, argv, words = case
    fill = {k: str(v) for k, v in runs.items()} | {"tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    protected = [runs["tok"], runs["gen"], runs["truncated"], runs["poisoned"]]
    before = {p: folder_digest(p) for p in protected}
    out = detok(*argv)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "it/s]" not in ln and "%|" not in ln]
    errors = [ln for ln in lines if ": error: " in ln]
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]
    assert not (runs["root"] / "PWNED").exists(), "a pickle ran code"
    for p in protected:  # a refused command leaves every existing run folder as it was
        assert folder_digest(p) == before[p], f"{name} changed {p}"


@pytest.mark.slow
def test_debug_shows_the_traceback(runs, tmp_path):
    out = detok("--debug", *TOK, "--out", str(tmp_path / "x"), "train.global_batch_size=0")
    assert out.returncode != 0 and "Traceback" in out.stderr


@pytest.mark.slow
def test_resume_with_other_architecture_is_one_line_and_writes_nothing(runs):
    before = folder_digest(runs["tok"])
    out = detok(*TOK, "--out", str(runs["tok"]), "--resume", "tokenizer.latent_dim=8")
    errors = [ln for ln in out.stderr.splitlines() if ": error: " in ln]
    assert out.returncode == 2 and len(errors) == 1 and "tokenizer.latent_dim" in errors[0], out.stderr[-1500:]
    assert folder_digest(runs["tok"]) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs: room for one tiny-tokenizer checkpoint (~15 MB), not two."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if rc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {rc.stderr.decode().strip()}")
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_disk_full_keeps_the_last_checkpoint_and_resumes(small_disk, tmp_path):
    run = small_disk / "run"
    out = detok(*TOK, "--out", str(run), "train.keep_checkpoints=0")
    errors = [ln for ln in out.stderr.splitlines() if ": error: " in ln]
    assert out.returncode == 2 and len(errors) == 1 and "disk full" in errors[0], out.stderr[-2000:]
    assert str(small_disk) in errors[0] and "step-00000002" in errors[0]
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000002"
    assert not list(ckpts.glob(".tmp-*")), "the half-written checkpoint was left on the full disk"
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    done = detok(*TOK, "--out", str(moved), "--resume", "train.keep_checkpoints=0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (moved / "checkpoints" / "latest").read_text().strip() == "step-00000004"


def _state(run: Path) -> dict:
    """Everything a resume must reproduce: weights, EMA, optimizer states, every rank's RNG."""
    from detok.io import Checkpoint

    ck = Checkpoint(run)
    st = ck.training_state()
    return {"step": ck.step, "weights": ck.weights, "ema": ck.ema, "optimizers": st["optimizers"],
            "rng": st["rank_rng"]}


def _equal(a, b) -> bool:
    import torch

    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.slow
def test_kill_9_inside_the_checkpoint_write_then_resume_is_exact(tmp_path):
    """SIGKILL while a checkpoint's temporary folder exists (polled), then --resume: the final state equals an
    uninterrupted run's, RNG included; `latest` never points at a half-written checkpoint."""
    import signal
    import time

    args = [*TOK, "train.max_steps=6", "train.ckpt_every=2", "train.keep_checkpoints=0"]
    assert detok(*args, "--out", str(tmp_path / "full")).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    caught = None
    for attempt in range(5):
        run = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "detok.cli.main", *args, "--out", str(run)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            tmp = list((run / "checkpoints").glob(".tmp-step-*")) if (run / "checkpoints").is_dir() else []
            if tmp and not tmp[0].name.endswith("00000006"):  # inside a write that is not the last one
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                caught = (run, tmp[0].name)
                break
            time.sleep(0.0005)
        if caught:
            break
        proc.wait()
    assert caught, "never saw a checkpoint being written in 5 runs"
    run, tmp_name = caught
    latest = run / "checkpoints" / "latest"
    if latest.exists():  # the previous complete checkpoint, never the one being written
        assert latest.read_text().strip() != tmp_name.replace(".tmp-", "")
        assert (run / "checkpoints" / latest.read_text().strip() / "weights.safetensors").is_file()
    out = detok(*args, "--out", str(run), "--resume")
    assert out.returncode == 0, out.stderr[-2000:]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert _equal(_state(run), _state(tmp_path / "full"))
