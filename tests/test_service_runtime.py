"""ONNX Runtime in the serving process: the request merger and the runner with merging on or off."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from genlab.service.runtime import Merger, Runner
from genlab.service.work import WorkPool

POOL = WorkPool(2)


def test_the_merger_runs_concurrent_calls_as_one_and_splits_the_result():
    calls: list[int] = []

    def double(x: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(x))
        return {"y": x * 2}

    async def main() -> list[dict[str, np.ndarray]]:
        merger = Merger(double, max_batch=8, pool=POOL)
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
        merger = Merger(fragile, max_batch=64, pool=POOL)
        alone = await merger(np.zeros((1, 2)))  # a run of its own
        merged = await asyncio.gather(merger(np.full((1, 2), -1.0)), merger(np.zeros((1, 2))), return_exceptions=True)
        after = await merger(np.ones((1, 2)))
        return alone, merged, after

    alone, merged, after = asyncio.run(main())
    np.testing.assert_array_equal(alone["y"], np.zeros((1, 2)))
    assert all(isinstance(r, ValueError) for r in merged)  # merged with the bad row: both get the error, none hangs
    np.testing.assert_array_equal(after["y"], np.ones((1, 2)))


def test_merged_and_direct_runs_give_the_same_numbers(exports):
    from genlab.export.reader import open_export

    model = open_export(exports["vaegan"], providers="cpu")
    images = model.decode(np.random.default_rng(0).standard_normal((6, model.latent_dim)).astype(np.float32))

    async def each(runner: Runner):
        scores = await asyncio.gather(*(runner.scores(images[i : i + 1]) for i in range(6)))
        encoded = await asyncio.gather(*(runner.encode(images[i : i + 1]) for i in range(6)))
        return scores, encoded

    merged, direct = (
        asyncio.run(each(Runner(model, True, 256, POOL))),
        asyncio.run(each(Runner(model, False, 256, POOL))),
    )
    for a, b in zip(merged[0], direct[0]):
        for name in model.score_names:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
    for (mu_a, _), (mu_b, _) in zip(merged[1], direct[1]):
        np.testing.assert_allclose(mu_a, mu_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batching", [True, False])
def test_scores_with_and_without_maps_each_merge_into_one_onnx_runtime_call(exports, batching):
    """Concurrent score calls, some with anomaly maps: merged, one ONNX Runtime call per kind (only the calls with maps
    ask for the map); unmerged, one per call. Every caller gets its own rows, as a direct call gives them."""
    from genlab.export.reader import open_export

    model = open_export(exports["vaegan-cond"], providers="cpu")
    labels = np.array([0, 7, 3, 9, 1])
    images = model.decode(np.random.default_rng(1).standard_normal((5, model.latent_dim)).astype(np.float32), labels)
    graph = model.graphs["score"]
    asked: list[tuple[int, bool]] = []  # each call's rows and whether it asked for the map
    session = graph.session

    class Counting:
        def run(self, names, feeds):
            asked.append((len(feeds["images"]), "anomaly_map" in names))
            return session.run(names, feeds)

    graph.session = Counting()
    given = [labels[:1], None, labels[2:3], None, labels[4:]]
    maps = [True, True, False, True, False]

    async def each(runner: Runner):
        return await asyncio.gather(
            *(runner.scores(images[i : i + 1], g, m) for i, (g, m) in enumerate(zip(given, maps)))
        )

    results = asyncio.run(each(Runner(model, batching, 256, POOL)))
    assert sorted(asked) == ([(2, False), (3, True)] if batching else sorted((1, m) for m in maps))
    graph.session = session
    for i, (g, m, got) in enumerate(zip(given, maps, results)):
        expected = model.scores(images[i : i + 1], g, maps=m)
        assert set(got) == set(expected) and ("anomaly_map" in got) == m
        np.testing.assert_array_equal(got["label"], expected["label"])
        np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5, atol=1e-6)
        if m:
            assert np.abs(got["anomaly_map"] - expected["anomaly_map"]).max() <= 1.5 / 255  # within one grey level


@pytest.mark.parametrize("batching", [True, False])
def test_a_runner_without_an_encoder_graph_refuses_to_encode(exports, batching):
    from genlab.export.reader import open_export

    runner = Runner(open_export(exports["gan-no-encoder"], providers="cpu"), batching, 16, POOL)
    with pytest.raises(KeyError):
        asyncio.run(runner.encode(np.zeros((1, 1, 28, 28), np.uint8)))


def test_the_merger_concatenates_every_input_and_merges_only_calls_with_as_many():
    calls: list[tuple[int, ...]] = []

    def shift(x: np.ndarray, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        calls.append(tuple(len(a) for a in (x, labels) if a is not None))
        return {
            "y": x + (0 if labels is None else labels[:, None]),
            "label": np.zeros(len(x)) if labels is None else labels,
        }

    async def main():
        merger = Merger(shift, max_batch=64, pool=POOL)
        with_labels = [(np.full((k, 2), i, np.float32), np.arange(k) + 10 * i) for i, k in enumerate((1, 3, 2))]
        outputs = await asyncio.gather(
            *(merger(x, labels) for x, labels in with_labels), merger(np.ones((2, 2), np.float32))
        )
        return with_labels, outputs

    with_labels, outputs = asyncio.run(main())
    for (x, labels), out in zip(with_labels, outputs):  # each caller gets its own rows, computed with its own labels
        np.testing.assert_array_equal(out["y"], x + labels[:, None])
        np.testing.assert_array_equal(out["label"], labels)
    np.testing.assert_array_equal(outputs[-1]["y"], np.ones((2, 2)))
    assert calls == [(6, 6), (2,)]  # the three labelled calls in one run; the one without labels on its own


def test_a_conditional_runner_passes_labels_through_merged_calls(exports):
    from genlab.export.reader import open_export

    model = open_export(exports["vaegan-cond"], providers="cpu")
    z = np.random.default_rng(0).standard_normal((6, model.latent_dim)).astype(np.float32)
    labels = np.array([0, 7, 7, 3, 9, 1])
    images = model.decode(z, labels)
    # scoring without labels (inferred class), with labels, and with -1 (unknown) merge into one call
    given = [labels[:2], None, np.array([-1, 9]), None, labels[4:5], labels[5:]]
    rows = [slice(0, 2), slice(2, 3), slice(3, 5), slice(5, 6), slice(4, 5), slice(5, 6)]

    async def each(runner: Runner):
        decoded = await asyncio.gather(*(runner.decode(z[i : i + 1], labels[i : i + 1]) for i in range(6)))
        encoded = await asyncio.gather(*(runner.encode(images[i : i + 1], labels[i : i + 1]) for i in range(6)))
        scores = await asyncio.gather(*(runner.scores(images[r], g) for r, g in zip(rows, given)))
        return decoded, encoded, scores

    for batching in (True, False):
        decoded, encoded, scores = asyncio.run(each(Runner(model, batching, 256, POOL)))
        np.testing.assert_array_equal(np.concatenate(decoded), images)
        mu = np.concatenate([mu for mu, _ in encoded])
        np.testing.assert_allclose(mu, model.encode(images, labels)[0], rtol=1e-5, atol=1e-6)
        for r, g, got in zip(rows, given, scores):
            expected = model.scores(images[r], g)
            np.testing.assert_array_equal(got["label"], expected["label"])
            np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5, atol=1e-6)
        assert scores[0]["label"].tolist() == [0, 7]  # the labels given are the classes scored under


@pytest.mark.parametrize("key", ["vaegan", "vaegan-cond", "gan-no-encoder"])
def test_warm_up_runs_every_graph_once(exports, key):
    """Decode two zero latents (a conditional model's under class 0), score the images without labels (a conditional
    model infers their class), encode them where there is an encoder."""
    from genlab.export.reader import open_export
    from genlab.service.runtime import warm_up

    model = open_export(exports[key], providers="cpu")
    calls: list[tuple[str, tuple, object]] = []

    def recording(graph: str):
        run = getattr(model, graph)

        def record(*inputs):
            out = run(*inputs)
            calls.append((graph, inputs, out))
            return out

        return record

    for graph in ("decode", "scores", "encode"):
        setattr(model, graph, recording(graph))
    warm_up(model)
    expected = ["decode", "scores", "encode"] if model.has_encoder else ["decode", "scores"]
    assert [graph for graph, _, _ in calls] == expected
    (_, (z, labels), images), (_, scored, scores) = calls[:2]
    np.testing.assert_array_equal(z, np.zeros((2, model.latent_dim), np.float32))
    if model.conditional:
        assert labels.dtype == np.int64 and labels.tolist() == [0, 0]
        assert scores["label"].shape == (2,)  # the class was inferred
    else:
        assert labels is None and "label" not in scores
    assert len(scored) == 1 and scored[0] is images and images.shape == (2, *model.image_shape)
    if model.has_encoder:
        _, (encoded, encode_labels), (mu, _) = calls[2]
        assert encoded is images and encode_labels is labels and mu.shape == (2, model.latent_dim)


def test_large_unmerged_calls_run_in_the_work_pool_and_small_ones_inline(exports):
    """A call on more than INLINE_ROWS images leaves the event loop (which keeps running meanwhile)."""
    import threading

    from genlab.export.reader import open_export
    from genlab.service.runtime import INLINE_ROWS

    model = open_export(exports["vaegan"], providers="cpu")
    runner = Runner(model, False, 256, POOL)
    threads = []
    graph = runner._graphs["decode"]
    runner._graphs["decode"] = lambda *inputs: threads.append(threading.current_thread().name) or graph(*inputs)

    async def main():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.get_running_loop().create_task(tick())
        small = await runner.decode(np.zeros((INLINE_ROWS, model.latent_dim), np.float32))
        before = ticks
        large = await runner.decode(np.zeros((INLINE_ROWS + 1, model.latent_dim), np.float32))
        ticker.cancel()
        return small, large, ticks - before

    small, large, ticks_during_large = asyncio.run(main())
    assert threads[0] == threading.main_thread().name and threads[1].startswith("genlab-work")
    assert ticks_during_large > 0  # the loop ran while the large call was in the pool
    np.testing.assert_array_equal(large[:INLINE_ROWS], small)


def test_a_lone_small_call_after_a_lone_one_runs_on_the_event_loop_and_company_goes_to_the_pool():
    """With no concurrency there is nothing to merge: the merger then skips the hop to the pool."""
    import threading

    from genlab.service.runtime import INLINE_ROWS

    where: list[tuple[str, int]] = []

    def record(x: np.ndarray) -> dict[str, np.ndarray]:
        where.append((threading.current_thread().name, len(x)))
        return {"y": x + 1}

    async def main():
        merger = Merger(record, max_batch=64, pool=POOL)
        lone = [await merger(np.zeros((1, 2))) for _ in range(2)]
        together = await asyncio.gather(*(merger(np.ones((1, 2))) for _ in range(3)))
        after_company = await merger(np.zeros((1, 2)))
        large = await merger(np.zeros((INLINE_ROWS + 1, 2)))
        return lone, together, after_company, large

    lone, together, after_company, large = asyncio.run(main())
    main_thread = threading.main_thread().name
    assert [w[0] == main_thread for w in where] == [True, True, False, False, False]
    assert [n for _, n in where] == [1, 1, 3, 1, INLINE_ROWS + 1]  # the three arrived together: one run
    assert all(np.array_equal(r["y"], np.ones((1, 2))) for r in lone + [after_company])
    assert all(np.array_equal(r["y"], np.full((1, 2), 2.0)) for r in together) and large["y"].shape == (
        INLINE_ROWS + 1,
        2,
    )
