"""deploy/kubernetes.yaml against the Kubernetes API schema (kubernetes-validate, offline: its schemas ship in the
package), and what it must say for genlab: the probes, the port, the image's user and the GPU limit."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes.yaml"
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())  # an older cluster and the newest schema shipped


@pytest.fixture(scope="module")
def resources() -> list[dict]:
    return [r for r in yaml.safe_load_all(MANIFEST.read_text()) if r]


def _deployments(resources: list[dict]) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == "Deployment"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_validates_strictly(resources, version):
    assert {r["kind"] for r in resources} == {"Deployment", "Service"}
    for resource in resources:
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_validator_refuses_a_broken_deployment(resources):
    broken = copy.deepcopy(_deployments(resources)["genlab-cpu"])
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {"name": "http"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = copy.deepcopy(_deployments(resources)["genlab-cpu"])
    broken["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_both_flavours_probe_the_service_and_the_gpu_one_asks_for_a_gpu(resources):
    deployments = _deployments(resources)
    assert set(deployments) == {"genlab-cpu", "genlab-gpu"}
    services = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Service"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["image"] == f"genlab:{name.split('-')[1]}"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["ports"] == [{"name": "http", "containerPort": 3000}]
        assert {"requests", "limits"} <= set(container["resources"])
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == 1034  # BentoML's bentoml user in the image
        # the server exits within 10 s of SIGTERM; the pod is given more
        assert pod["spec"]["terminationGracePeriodSeconds"] > 10
        assert (
            services[name]["spec"]["selector"]
            == deployment["spec"]["selector"]["matchLabels"]
            == pod["metadata"]["labels"]
        )
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if name == "genlab-gpu" else None)
