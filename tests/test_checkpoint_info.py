"""What a newcomer meets around a checkpoint: a foreign file refused in one line, every train default in --help,
`genlab info`'s calibration in a few short lines, and the documented loading snippet free of warnings."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from genlab.cli.main import build_parser, main

from genlab.checkpoint import save_checkpoint
from genlab.config import TrainConfig, to_dict
from genlab.models import build_model
from genlab.thresholds import calibration_check
from tests.conftest import tiny_config


def test_a_file_that_is_not_a_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    text = tmp_path / "README.md"
    text.write_text("# a readme\n" * 50)
    assert main(["info", str(text)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights_only" not in err, err
    assert "neither a genlab checkpoint nor an export" in err and err.endswith(")")


def test_a_pickle_with_objects_is_refused_without_suggesting_to_unpickle_it(tmp_path, capsys):
    torch.save({"format": "genlab-checkpoint", "thing": TrainConfig()}, tmp_path / "objects.pt")
    assert main(["info", str(tmp_path / "objects.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights_only" not in err and "refused unread" in err, err


def test_train_help_shows_every_default():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        if action.dest in ("help", "family", "out"):
            continue
        assert action.help and re.search(r"\bdefault\b", action.help), action.option_strings
    helps = {action.dest: action.help for action in train._actions}
    assert "default 5" in helps["epochs"] and "default 0" in helps["seed"]


@pytest.fixture
def checkpoint_file(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config("vaegan", image_size=16))
    payload = {
        "family": "vaegan",
        "model_config": to_dict(model.cfg),
        "train_config": to_dict(TrainConfig()),
        "data": {},
        "model": model.state_dict(),
        "calibration": {
            "split": "val",
            "n": 50,
            "check": calibration_check(np.linspace(0.0, 1.0, 50)),
            "percentiles": [0.0, 50.0, 95.0, 99.0, 100.0],
            "scores": {name: [0.0, 1.0, 2.0, 3.0, 4.0] for name in type(model).score_descriptions},
            "descriptions": dict(type(model).score_descriptions),
        },
    }
    save_checkpoint(payload, tmp_path / "last.pt")
    return tmp_path / "last.pt"


def test_info_prints_the_calibration_in_short_lines(checkpoint_file, capsys):
    assert main(["info", str(checkpoint_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("calibration:"))
    assert "50 val images" in out[start]
    # the threshold's false-positive rate on unseen normal images, and the warning that 50 images are few
    assert (
        out[start + 1]
        == "  threshold (p99) on unseen normal images: flags 2.0% (leave-one-out over the 50 held-out normal images)"
    )
    assert out[start + 2].startswith("  warning: the threshold rests on 50 held-out normal images")
    rows = out[start + 3 : start + 3 + len(build_model(tiny_config("vaegan")).score_descriptions)]
    assert rows[0] == "  score: 1 / 2 / 3" and all(len(line) < 80 for line in rows), rows


def test_the_documented_loading_snippet_runs_without_warnings(checkpoint_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from genlab.checkpoint import load_checkpoint, model_from_checkpoint

        model = model_from_checkpoint(load_checkpoint(checkpoint_file))  # eval mode, EMA weights where kept
        images = model.decode(model.sample_latents(16))  # N(0, I) draws -> [16, 1, 16, 16] in [-1, 1]
        assert images.numpy().shape == (16, 1, 16, 16) and -1.0 <= float(images.min()) <= float(images.max()) <= 1.0
