"""The command line as a user meets it: exit codes, one-line errors, info, Ctrl-C, torchrun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from genlab.cli.main import main

from genlab.families import FAMILY_NAMES
from genlab.models import MODELS

# tiny networks, and no sample-quality tracking (none of these tests is about it)
TINY_SET = ["--set", "width=4", "--set", "latent_dim=4", "--set", "quality_every=0"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genlab", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def test_cli_choices_are_the_registered_families():
    assert tuple(MODELS) == FAMILY_NAMES  # the registry refuses a class genlab.families does not list


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "vae", "--out", "{tmp}/r", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "vae", "--out", "{tmp}/r", "--dataset", "mnist", "--data-dir", "{tmp}/none"], "MNIST/raw"),
        (["train", "vae", "--out", "{tmp}/r", "--set", "colour=blue"], "--set colour: unknown key"),
        (["train", "vae", "--out", "{tmp}/r", "--set", "latent_dim=many"], "expected a int"),
        (["train", "vae", "--out", "{tmp}/r", "--set", "nokey"], "expects key=value"),
        (["train", "vae", "--out", "{tmp}/r", "--translate", "0.9"], "translate must be"),
        (["train", "vae", "--out", "{tmp}/r", "--device", "tpu"], "device must be"),
        (["train", "vae", "--out", "{tmp}/r", "--set", "image_size=9"], "even image size"),
        (["train", "diffusion", "--out", "{tmp}/r"], "invalid choice"),
        (["train", "vae"], "--out"),
        (
            ["train", "vae", "--out", "{tmp}/r", "--conditional", "--normal-class", "1"],
            "cannot be combined with --normal-class",
        ),
        (["train", "vae", "--out", "{tmp}/r", "--condition-on", "Male"], "picks a CelebA attribute"),
        (["train", "vae", "--out", "{tmp}/r", "--set", "class_weight=-1"], "class_weight must be >= 0"),
        (["info", "{tmp}/missing.pt"], "checkpoint not found"),
        (["info", "{tmp}/garbage.pt"], "not a readable genlab checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle, tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1, err


def test_truncated_and_foreign_checkpoints(tmp_path, capsys, trained):
    data = trained.checkpoint("vae-1").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    import torch

    torch.save({"hello": 1}, tmp_path / "foreign.pt")
    ckpt = torch.load(trained.checkpoint("vae-1"), weights_only=True)
    torch.save({**ckpt, "format_version": 99}, tmp_path / "future.pt")
    capsys.readouterr()
    for name, needle in (
        ("cut.pt", "corrupt or truncated"),
        ("foreign.pt", "not a genlab checkpoint"),
        ("future.pt", "format version 99"),
    ):
        assert main(["info", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1


def test_info_prints_the_checkpoint(tmp_path, capsys):
    assert main(["train", "gan", "--out", str(tmp_path / "r"), "--epochs", "1", "--normal-class", "0", *TINY_SET]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "r"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "gan" and info["complete"] and info["data"]["normal_class"] == 0
    assert info["calibration"]["scores"]["discriminator"]["meaning"].startswith("-log D(x)")
    assert "relative_recon_error" in info["calibration"]["scores"]["score"]["meaning"]
    assert main(["info", str(tmp_path / "r" / "last.pt")]) == 0
    assert "family: gan" in capsys.readouterr().out


def test_ctrl_c_saves_and_resume_continues(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen(
        # one digit (6 steps an epoch): the first epoch ends soon, and 50 of them would take a while
        [sys.executable, "-m", "genlab", "train", "vae", "--out", str(out), "--normal-class", "1", "--epochs", "50"]
        + TINY_SET,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    lines: list[str] = []
    first_epoch_or_exit = threading.Event()
    epoch_done = re.compile(r"epoch 1/50: [a-z]")  # the first epoch's line (its progress bar: "epoch 1/50:  4%|")

    def read_stderr() -> None:  # every line (and progress-bar update), until the process closes its stderr
        for line in proc.stderr:
            lines.append(line)
            if epoch_done.match(line):
                first_epoch_or_exit.set()
        first_epoch_or_exit.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        first_epoch_or_exit.wait(timeout=120)
        assert any(epoch_done.match(line) for line in lines), "no first epoch in 120 s:\n" + "".join(lines)[-3000:]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(timeout=30)
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert "--resume" in err.splitlines()[-1]
    from genlab.checkpoint import load_checkpoint

    stopped = load_checkpoint(out)
    assert not stopped["complete"] and stopped["step"] > 0
    done = run_cli("train", "vae", "--out", str(out), "--epochs", str(stopped["epoch"] + 1), "--resume", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] > stopped["step"]


def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "genlab",
            "train",
            "vaegan",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--normal-class",
            "2",
            "--batch-size",
            "32",
            *TINY_SET,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["world_size"] == 2 and summary["step"] == 400 // 2 // 32
    from genlab.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    assert ckpt["world_size"] == 2 and ckpt["complete"] and len(ckpt["rng"]["ranks"]) == 2
    assert Path(out / "samples.png").exists()
