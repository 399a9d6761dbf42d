"""ONNX Runtime in the serving process: the request merger and the runner with merging on or off."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.runtime import Merger, Runner
from tests.service_fixtures import exports  # noqa: F401 (fixture)


def test_the_merger_runs_concurrent_calls_as_one_and_splits_the_result():
    calls: list[int] = []

    def double(x: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(x))
        return {"y": x * 2}

    async def main() -> list[dict[str, np.ndarray]]:
        merger = Merger(double, max_batch=8)
        inputs = [np.full((k, 3), i, np.float32) for i, k in enumerate((1, 2, 1, 3, 1, 4))]
        return inputs, await asyncio.gather(*(merger(x) for x in inputs))

    inputs, outputs = asyncio.run(main())
    for x, out in zip(inputs, outputs):
        np.testing.assert_array_equal(out["y"], x * 2)  # each caller gets its own rows back
    # all six arrived in one turn of the event loop: merged into runs of at most max_batch rows, in order
    assert calls == [8, 4]


def test_a_failed_merged_call_fails_every_waiting_request_and_the_next_ones_still_run():
    def fragile(x: np.ndarray) -> dict[str, np.ndarray]:
        if (x < 0).any():
            raise ValueError("bad row")
        return {"y": x}

    async def main():
        merger = Merger(fragile, max_batch=64)
        alone = await merger(np.zeros((1, 2)))  # a run of its own
        merged = await asyncio.gather(merger(np.full((1, 2), -1.0)), merger(np.zeros((1, 2))), return_exceptions=True)
        after = await merger(np.ones((1, 2)))
        return alone, merged, after

    alone, merged, after = asyncio.run(main())
    np.testing.assert_array_equal(alone["y"], np.zeros((1, 2)))
    assert all(isinstance(r, ValueError) for r in merged)  # merged with the bad row: both get the error, none hangs
    np.testing.assert_array_equal(after["y"], np.ones((1, 2)))


def test_merged_and_direct_runs_give_the_same_numbers(exports):
    from export.reader import open_export

    model = open_export(exports["vaegan"], providers="cpu")
    images = model.decode(np.random.default_rng(0).standard_normal((6, model.latent_dim)).astype(np.float32))

    async def each(runner: Runner):
        scores = await asyncio.gather(*(runner.scores(images[i : i + 1]) for i in range(6)))
        encoded = await asyncio.gather(*(runner.encode(images[i : i + 1]) for i in range(6)))
        return scores, encoded

    merged, direct = asyncio.run(each(Runner(model, True, 256))), asyncio.run(each(Runner(model, False, 256)))
    for a, b in zip(merged[0], direct[0]):
        for name in model.score_names:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
    for (mu_a, _), (mu_b, _) in zip(merged[1], direct[1]):
        np.testing.assert_allclose(mu_a, mu_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batching", [True, False])
def test_a_runner_without_an_encoder_graph_refuses_to_encode(exports, batching):
    from export.reader import open_export

    runner = Runner(open_export(exports["gan-no-encoder"], providers="cpu"), batching, 16)
    with pytest.raises(KeyError):
        asyncio.run(runner.encode(np.zeros((1, 1, 28, 28), np.uint8)))
