"""Nothing half-written, nothing lost: Ctrl-C, then SIGKILL at the worst moments, for train and export.

Each kill is a real ``SIGKILL`` of a real ``genlab`` process. To hit a chosen moment (mid-epoch,
in the middle of writing a checkpoint, between two steps of an export) the process runs
``genlab`` through a small driver that wraps one function so that its Nth call kills the
process; nothing else is changed, except that an interrupted export copies the graphs a real
export of the same checkpoint wrote instead of tracing them again (the slow dynamo exporter,
replaced as tests/test_export.py's fast_exporter does: everything else in the export runs for
real). Resumed runs must reach bit-identical weights to a run that was never interrupted, and an
interrupted export must never leave a directory that opens as a complete export without being one.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genlab.checkpoint import load_checkpoint

TINY_SET = ["--set", "width=4", "--set", "latent_dim=4", "--set", "hidden=16"]
# one digit class of mnist-5k: 400 training images, 6 steps per epoch at batch 64
# (no sample-quality tracking: none of these tests is about it, and each epoch would measure it)
RUN = ["--normal-class", "1", "--epochs", "4", "--log-every", "2", "--set", "quality_every=0", *TINY_SET]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

# Runs ``genlab`` with ARGV (JSON) after wrapping TARGET (module:attribute) so that its Nth call
# first runs BEFORE (a Python statement, with the call's arguments as ``args``) and then sends
# SIGNAL to this process (SIGKILL ends it there; SIGINT is a Ctrl-C, and the call goes on). With
# GENLAB_TEST_GRAPHS (an export directory) an export copies its graphs from there instead of tracing them.
DRIVER = r"""
import importlib, json, os, signal, sys
target, nth, before, argv, sig = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
module_name, _, attribute = target.partition(":")
owner_name, _, method = attribute.partition(".")
module = importlib.import_module(module_name)
owner = getattr(module, owner_name) if method else module
name = method or attribute
original = getattr(owner, name)
calls = [0]
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth:
        exec(before)
        os.kill(os.getpid(), getattr(signal, sig))
    return original(*args, **kwargs)
setattr(owner, name, wrapped)
graphs = os.environ.get("GENLAB_TEST_GRAPHS")
if graphs:  # imported after the wrapping, so that what it imports by name from elsewhere is the wrapped function
    import shutil
    import genlab.export.onnx_export as onnx_export
    onnx_export._export_graph = lambda module, example, spec, path, opset: shutil.copyfile(
        os.path.join(graphs, path.name), path
    )
from genlab.cli.main import main
sys.exit(main(argv))
"""


def genlab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genlab", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def killed_at(
    target: str, nth: int, argv: list[str], before: str = "pass", sig: str = "SIGKILL", graphs: Path | None = None
) -> subprocess.CompletedProcess:
    """``graphs``: an export of the checkpoint an export in ``argv`` reads, whose graphs it copies."""
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, target, str(nth), before, json.dumps(argv), sig],
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV, "GENLAB_TEST_GRAPHS": str(graphs)} if graphs else ENV,
    )
    expected = -signal.SIGKILL if sig == "SIGKILL" else 130
    assert result.returncode == expected, f"exit {result.returncode}, expected {expected}: {result.stderr[-2000:]}"
    return result


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a), load_checkpoint(b)
    assert x["complete"] and y["complete"] and x["step"] == y["step"] and x["epoch"] == y["epoch"]
    for key, value in x["model"].items():
        assert torch.equal(value, y["model"][key]), key


def step_records(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if '"kind": "step"' in line]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    run = tmp_path_factory.mktemp("straight") / "run"
    result = genlab("train", "vae", "--out", str(run), *RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def test_the_printed_resume_command_finishes_the_run(straight, tmp_path):
    """Ctrl-C mid-epoch, then run exactly the command genlab printed: it reaches the run's own epoch
    count (not the default 5) with the weights of a run that never stopped."""
    run = tmp_path / "a run dir with spaces" / "r"  # the printed command must quote it
    stopped = killed_at("genlab.models.vae:VAE.train_step", 9, ["train", "vae", "--out", str(run), *RUN], sig="SIGINT")
    hint = stopped.stderr.strip().splitlines()[-1]
    assert "interrupted at step 9" in hint, hint
    command = shlex.split(hint.partition("continue with: ")[2])
    assert (
        command[:2] == ["genlab", "train"]
        and command[-1] == "--resume"
        and Path(command[command.index("--out") + 1]) == run
    )
    assert load_checkpoint(run)["step"] == 9 and not load_checkpoint(run)["complete"]
    result = genlab(*command[1:], "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["epoch"] == summary["epochs"] == 4 and summary["stopped"] is None
    assert_same_weights(straight / "last.pt", run / "last.pt")
    assert step_records(run) == list(range(1, 25))


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "0.1"),
        ("--dataset", "mnist"),
        ("--batch-size", "8"),
        ("--set", "beta=2"),
        ("--arch", "mlp"),
        ("--normal-class", "3"),
    ],
)
def test_resume_refuses_options_that_would_change_the_run(flag, value, straight, capsys):
    from genlab.cli.main import main

    before = (straight / "last.pt").read_bytes()
    assert main(["train", "vae", "--out", str(straight), "--resume", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flag} cannot be used with --resume" in err, err
    assert (straight / "last.pt").read_bytes() == before


def test_sigkill_mid_epoch_then_resume_matches(straight, tmp_path):
    run = tmp_path / "r"
    # step 15 of 24: epoch 3 is half done; the last checkpoint is epoch 2's
    killed_at("genlab.models.vae:VAE.train_step", 15, ["train", "vae", "--out", str(run), *RUN])
    assert load_checkpoint(run)["step"] == 12
    result = genlab("train", "vae", "--out", str(run), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_weights(straight / "last.pt", run / "last.pt")
    assert step_records(run) == list(range(1, 25))


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(straight, tmp_path):
    run = tmp_path / "r"
    # the second checkpoint write dies after half a file has reached the temp file: epoch 1 wrote last.pt (and no
    # best.pt: sample quality is not tracked); the second is epoch 2's last.pt
    killed_at(
        "torch:save",
        2,
        ["train", "vae", "--out", str(run), *RUN],
        before="args[1].write(b'PK half a checkpoint'); args[1].flush()",
    )
    leftovers = list(run.glob(".last.pt.*.tmp"))
    assert leftovers, "the kill should have left the temp file"
    assert load_checkpoint(run)["step"] == 6  # epoch 1's checkpoint, intact
    result = genlab("train", "vae", "--out", str(run), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not any(p.exists() for p in leftovers)
    assert_same_weights(straight / "last.pt", run / "last.pt")
    assert step_records(run) == list(range(1, 25))  # records written after epoch 1's checkpoint were trimmed


# -- export --------------------------------------------------------------------------------------
def _opens_complete(directory: Path) -> bool:
    from genlab.export.reader import ExportError, open_export

    try:
        open_export(directory, providers="cpu")
    except ExportError:
        return False
    return True


@pytest.mark.parametrize(
    "target, nth, published",
    [
        ("genlab.export.onnx_export:_check_onnx", 2, False),  # between two graphs
        pytest.param(
            "genlab.export.onnx_export:check_parity", 1, False, marks=pytest.mark.slow
        ),  # graphs written, parity not checked
        pytest.param(
            "genlab.export.onnx_export:build_manifest", 1, False, marks=pytest.mark.slow
        ),  # before the manifest
        ("os:replace", 1, False),  # everything flushed, before the rename that publishes
        ("genlab.files:fsync_directory", 2, True),  # just after that rename
    ],
)
def test_sigkill_during_export_never_leaves_a_half_export(straight, exported, tmp_path, target, nth, published):
    out = tmp_path / "export"
    killed_at(target, nth, ["export", str(straight), "--out", str(out), "--no-bento"], graphs=exported)
    assert out.exists() == published and (not published or _opens_complete(out))
    for entry in tmp_path.iterdir():  # a temp directory never passes for an export unless it is complete
        if entry.is_dir() and entry != out:
            assert entry.name.startswith(".export.tmp-"), entry
            assert not (entry / "manifest.json").exists() or _opens_complete(entry), entry


@pytest.fixture(scope="module")
def exported(straight, tmp_path_factory) -> Path:
    """``straight`` exported for real (the interrupted exports copy its graphs)."""
    out = tmp_path_factory.mktemp("exported") / "export"
    result = genlab("export", str(straight), "--out", str(out), "--no-bento")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_sigkill_while_overwriting_an_export_keeps_a_complete_one(straight, exported, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(exported, out)
    # the old export has been moved aside; the new one is about to be renamed into place
    killed_at(
        "genlab.files:publish_directory",
        1,
        ["export", str(straight), "--out", str(out), "--no-bento", "--overwrite"],
        graphs=exported,
    )
    complete = [d for d in [out, *tmp_path.glob(".export.old-*")] if d.exists() and _opens_complete(d)]
    assert complete, "no complete export left"
