"""A served model evaluated over HTTP (a real `genlab serve`, API key on) gives the export directory's numbers."""

from __future__ import annotations

import json
import shutil

import pytest

from genlab.errors import GenlabError
from tests.service_fixtures import running_server

KEY = "eval-over-http-key"


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    """(url, export directory, model name) of the one-class VAE's export served with an API key."""
    export = exports["vae-1"]
    name = json.loads((export / "manifest.json").read_text())["name"]
    log = tmp_path_factory.mktemp("http-eval") / "server.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_API_KEY", KEY)  # the server's key, and the one the evaluation sends
        with running_server([export], log, env={"GENLAB_API_KEY": KEY}) as url:
            yield url, export, name


def test_fid_through_the_server_equals_the_export_directory(served):
    from genlab.eval.fid import compute_fid

    url, export, name = served
    settings = dict(n=40, extractor="lenet", seed=2, bootstrap=4, progress=False)
    local = compute_fid(str(export), **settings)
    remote = compute_fid(url, served_model=name, prior_from=str(export), **settings)
    assert remote["kind"] == "http" and remote["model"] == f"{url} model {name}"
    for key, value in local["values"].items():
        assert remote["values"][key] == pytest.approx(value, rel=1e-6), key
    assert remote["intervals"]["lenet_fd"]["low"] == pytest.approx(local["intervals"]["lenet_fd"]["low"], rel=1e-6)
    manifest = json.loads((export / "manifest.json").read_text())
    assert remote["provenance"]["model"]["files"] == manifest["files"] == local["provenance"]["model"]["files"]
    assert remote["provenance"]["model"]["url"] == url
    assert remote["settings"] == local["settings"] + f"; served by {url}"


def test_a_served_model_without_its_prior_or_key_is_one_clear_line(served, monkeypatch, exports):
    from genlab.eval.fid import compute_fid

    url, export, name = served
    with pytest.raises(GenlabError, match="--prior-from EXPORT"):
        compute_fid(url, n=10, extractor="lenet", progress=False)
    with pytest.raises(GenlabError, match="not the served model"):
        compute_fid(url, n=10, extractor="lenet", prior_from=str(exports["gan"]), progress=False)
    with pytest.raises(GenlabError, match="serves no model named 'nope'"):
        compute_fid(url, served_model="nope", n=10, extractor="lenet", progress=False)
    monkeypatch.delenv("GENLAB_API_KEY")
    with pytest.raises(GenlabError, match="answered 401"):
        compute_fid(url, n=10, extractor="lenet", progress=False)


def test_anomaly_scores_through_the_server_equal_the_export(served):
    from genlab.eval.anomaly import evaluate_anomaly
    from genlab.eval.model_source import open_model

    url, export, name = served
    local = evaluate_anomaly(str(export))
    remote = evaluate_anomaly(open_model(url, served_model=name))
    assert remote["counts"] == local["counts"] and set(remote["components"]) == set(local["components"])
    for component, row in local["components"].items():
        assert remote["components"][component]["auroc"] == pytest.approx(row["auroc"], abs=1e-9), component
    assert remote["calibrated"] is False  # the server does not publish its calibration


def test_a_report_puts_served_and_file_side_by_side_and_says_whether_serving_drifted(served, trained, tmp_path):
    from genlab.cli.main import main
    from genlab.eval.report import ReportSettings, write_report

    url, export, name = served
    run = shutil.copytree(trained.run("vae-1"), tmp_path / "vae-1")
    common = ["--n", "30", "--extractor", "lenet", "--bootstrap", "0", "--save", str(run)]
    assert main(["eval", "fid", str(export), *common]) == 0
    assert main(["eval", "fid", url, "--model", name, "--prior-from", str(export), *common]) == 0
    assert len(list((run / "eval").glob("fid-*.json"))) == 2  # the served result does not overwrite the file's
    report = write_report([run], tmp_path / "report", ReportSettings(compute=False))
    header, rows = report["tables"]["FID / KID"]["header"], report["tables"]["FID / KID"]["rows"]
    drift = [cell for h, cell in zip(header, rows[0]) if h.startswith("serving vs file")]
    assert len(drift) == 1 and drift[0].startswith("no drift: lenet_fd"), drift
    assert "(served)" in drift[0] and "(onnx)" in drift[0]
