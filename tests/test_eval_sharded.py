"""Evaluation split over torchrun ranks gives the single-process numbers: a real two-process gloo run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.service_fixtures import REPO


def test_shards_partition_the_items_in_index_order():
    from genlab.eval.sharding import Shards
    from genlab.training.distributed import DistEnv

    for n in (0, 1, 7, 64):
        parts = [Shards(DistEnv(rank, 3, "cpu")).slice(n) for rank in range(3)]
        assert np.concatenate([np.arange(n)[p] for p in parts]).tolist() == list(range(n))


def test_a_part_of_the_samples_is_the_same_images_as_in_the_whole(trained):
    from genlab.eval.model_source import open_model

    source = open_model(str(trained.run("vae-1")))
    whole, _ = source.sample_labelled(30, 4, batch_size=8)
    halves = [source.sample_labelled(30, 4, batch_size=8, part=part)[0] for part in (slice(0, 13), slice(13, 30))]
    assert np.array_equal(np.concatenate(halves), whole)


def test_fid_and_kid_on_two_torchrun_ranks_equal_one_process(trained, genlab_cache):
    from genlab.eval.fid import compute_fid

    run = trained.run("vae-1")
    args = ["--n", "48", "--extractor", "lenet", "--bootstrap", "6", "--no-save", "--json"]
    single = compute_fid(str(run), n=48, extractor="lenet", bootstrap=6, progress=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # "--" ends torchrun's own options: its parser would take genlab's --n for an abbreviation of --nnodes
    command += ["-m", "genlab", "--", "eval", "fid", str(run), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENLAB_CACHE": str(genlab_cache)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = json.loads(done.stdout)  # rank 0 alone prints
    assert sharded["processes"] == 2 and single["processes"] == 1
    assert set(sharded["values"]) == set(single["values"]) == {"lenet_fd", "lenet_kd"}
    for key, value in single["values"].items():
        assert sharded["values"][key] == pytest.approx(value, rel=1e-6), key
    for end in ("low", "high"):
        assert sharded["intervals"]["lenet_fd"][end] == pytest.approx(single["intervals"]["lenet_fd"][end], rel=1e-6)
    assert sharded["reference_cache"] == single["reference_cache"] and sharded["reference_cached"]
    assert sharded["provenance"]["model"] == single["provenance"]["model"]
    assert done.stderr.count("biased upward") == 1  # one rank speaks
