"""deploy/kserve.yaml, offline: the InferenceService's shape against a JSON Schema taken from KServe's v1beta1 CRD, the
pod its custom predictor describes against the Kubernetes API schema (kubernetes-validate), the pod and container
fields against what Knative accepts with its default features, and the probes against the paths genlab answers
without the API key."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from genlab.service.oip import OPEN_PATHS

from genlab.bearer import HEALTH_PATHS

kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")  # kubernetes-validate's own dependency

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "kserve.yaml"
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())  # an older cluster and the newest schema shipped
UNKEYED = (*HEALTH_PATHS, *OPEN_PATHS)  # what the service answers without `Authorization: Bearer <key>`

# KServe's v1beta1 CRD (config/crd/full/serving.kserve.io_inferenceservices.yaml; the keys of v0.15, all in later
# releases too): the predictor inlines the component extension (its own keys, typed here) and a PodSpec (its keys;
# their values are checked against the Kubernetes schema by wrapping them into a Pod). The framework keys (sklearn,
# onnx, model, ...) are left out: `containers` make the predictor a custom one, which excludes them, and protocolVersion
# belongs to them.
INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
COMPONENT = {
    "minReplicas": INT32,
    "maxReplicas": INT32,
    "scaleTarget": INT32,
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleMetricType": {"enum": ["Utilization", "Value", "AverageValue"]},
    "autoScaling": {"type": "object"},
    "containerConcurrency": {"type": "integer"},
    "timeout": {"type": "integer"},
    "canaryTrafficPercent": {"type": "integer"},
    "logger": {"type": "object"},
    "batcher": {"type": "object"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "deploymentStrategy": {"type": "object"},
}
POD_SPEC = (
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname",
    "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead", "preemptionPolicy", "priority",
    "priorityClassName", "readinessGates", "resourceClaims", "resources", "restartPolicy", "runtimeClassName",
    "schedulerName", "schedulingGates", "securityContext", "serviceAccount", "serviceAccountName", "setHostnameAsFQDN",
    "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints",
    "volumes",
)  # fmt: skip
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
INFERENCE_SERVICE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"},  # KServe's IsvcNameFmt
                "namespace": {"type": "string"},
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {
                "predictor": {
                    "type": "object",
                    "required": ["containers"],
                    "additionalProperties": False,
                    "properties": {
                        **COMPONENT,
                        **{key: {} for key in POD_SPEC},
                        "containers": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "object", "required": ["name"]},
                        },
                        "serviceAccountName": {"type": "string"},
                    },
                },
                "transformer": {"type": "object"},
                "explainer": {"type": "object"},
            },
        },
    },
}

# What Knative Serving's webhook accepts in a revision's pod with its default features (pkg/apis/serving/fieldmask.go:
# PodSpecMask, ContainerMask, SecurityContextMask; k8s_validation.go), so that the manifest also runs in KServe's
# Serverless mode. startupProbe is left out: Knative takes it from 1.15 only.
KNATIVE_POD = {"containers", "serviceAccountName", "volumes", "imagePullSecrets", "enableServiceLinks"}
KNATIVE_CONTAINER = {
    "name", "args", "command", "env", "envFrom", "workingDir", "image", "imagePullPolicy", "ports", "resources",
    "securityContext", "readinessProbe", "livenessProbe", "terminationMessagePath", "terminationMessagePolicy",
    "volumeMounts",
}  # fmt: skip
KNATIVE_SECURITY = {
    "capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot", "allowPrivilegeEscalation",
    "seccompProfile",
}  # fmt: skip
KNATIVE_PORT_NAMES = {"http1", "h2c"}  # or none
KNATIVE_RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}


@pytest.fixture(scope="module")
def isvc() -> dict:
    (resource,) = [r for r in yaml.safe_load_all(MANIFEST.read_text()) if r]
    return resource


def validate_shape(isvc: dict) -> None:
    """Raises jsonschema.ValidationError where the InferenceService does not fit KServe's CRD."""
    jsonschema.validate(isvc, INFERENCE_SERVICE, cls=jsonschema.Draft202012Validator)


def predictor_pod(isvc: dict) -> dict:
    """The predictor's inlined PodSpec as a Pod, for the Kubernetes schema."""
    predictor = isvc["spec"]["predictor"]
    spec = {key: value for key, value in predictor.items() if key not in COMPONENT}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{isvc['metadata']['name']}-predictor"},
        "spec": spec,
    }


def knative_refusals(isvc: dict) -> list[str]:
    """What Knative's webhook would refuse in the predictor's pod, one line each."""
    spec = predictor_pod(isvc)["spec"]
    refusals = [f"pod field {key}" for key in sorted(set(spec) - KNATIVE_POD)]
    (container,) = spec["containers"]
    refusals += [f"container field {key}" for key in sorted(set(container) - KNATIVE_CONTAINER)]
    refusals += [
        f"securityContext.{key}" for key in sorted(set(container.get("securityContext", {})) - KNATIVE_SECURITY)
    ]
    ports = container.get("ports", [])
    if len(ports) > 1:
        refusals.append("more than one port")
    if ports and ports[0].get("name", "http1") not in KNATIVE_PORT_NAMES:
        refusals.append(f"port name {ports[0]['name']!r}")
    if ports and ports[0].get("protocol", "TCP") != "TCP":
        refusals.append(f"port protocol {ports[0]['protocol']!r}")
    refusals += [
        f"reserved env {env['name']}" for env in container.get("env", []) if env["name"] in KNATIVE_RESERVED_ENV
    ]
    for probe in ("readinessProbe", "livenessProbe"):
        port = container.get(probe, {}).get("httpGet", {}).get("port")
        if isinstance(port, str) and ports and port != ports[0].get("name"):
            refusals.append(f"{probe} port {port!r} is not the container's port")
    return refusals


def keyed_probes(isvc: dict) -> list[str]:
    """The probes that ask a path the service answers only with the API key."""
    (container,) = isvc["spec"]["predictor"]["containers"]
    paths = {probe: container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")}
    return [f"{probe} {path}" for probe, path in paths.items() if path not in UNKEYED]


def test_the_inference_service_fits_kserves_crd(isvc):
    jsonschema.Draft202012Validator.check_schema(INFERENCE_SERVICE)
    validate_shape(isvc)
    predictor = isvc["spec"]["predictor"]
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] == "cpu" and 1 <= predictor["scaleTarget"] <= 100  # an HPA on CPU percent
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


@pytest.mark.parametrize("version", VERSIONS)
def test_the_predictor_pod_validates_strictly(isvc, version):
    kubernetes_validate.validate(predictor_pod(isvc), version, strict=True)


def test_the_pod_uses_only_what_knative_accepts(isvc):
    assert knative_refusals(isvc) == []


def test_the_container_serves_genlab_over_the_open_inference_protocol(isvc):
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"  # the predictor container, as KServe names it
    assert container["image"] == "genlab:cpu"
    assert container["args"] == ["--port", "3000"]
    assert container["ports"] == [{"name": "http1", "containerPort": 3000, "protocol": "TCP"}]
    env = {e["name"]: e for e in container["env"]}
    assert env["PROTOCOL"]["value"] == "v2"  # how KServe learns a custom predictor's protocol
    assert env["GENLAB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "genlab", "key": "api-key"}}
    assert {"requests", "limits"} <= set(container["resources"])
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1034  # BentoML's bentoml user in the image
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}


def test_the_probes_ask_the_protocols_health_paths_without_the_key(isvc):
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http1"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http1"}
    assert set(OPEN_PATHS) == {"/v2/health/ready", "/v2/health/live"}
    assert keyed_probes(isvc) == []


def _parent(isvc: dict, path: str) -> tuple[dict | list, str | int]:
    """The node holding the dotted ``path`` (list indices as numbers) and its last key."""
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    node = isvc
    for part in parents:
        node = node[part]
    return node, last


def _set(path: str, value: object) -> Callable[[dict], None]:
    def edit(isvc: dict) -> None:
        node, last = _parent(isvc, path)
        node[last] = value

    return edit


def _rename(path: str, new: str) -> Callable[[dict], None]:
    def edit(isvc: dict) -> None:
        node, last = _parent(isvc, path)
        node[new] = node.pop(last)

    return edit


def _refused_by_the_schema(isvc: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_shape(isvc)


def _refused_by_kubernetes(isvc: dict) -> None:
    validate_shape(isvc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(predictor_pod(isvc), VERSIONS[-1], strict=True)


def _refused_by_knative(isvc: dict) -> None:
    validate_shape(isvc)
    kubernetes_validate.validate(predictor_pod(isvc), VERSIONS[-1], strict=True)
    assert knative_refusals(isvc)


def _a_keyed_probe(isvc: dict) -> None:
    assert keyed_probes(isvc)


CONTAINER = "spec.predictor.containers.0"
BROKEN = {
    "misspelt predictor key": (_rename("spec.predictor.minReplicas", "minReplica"), _refused_by_the_schema),
    "protocolVersion on a custom predictor": (_set("spec.predictor.protocolVersion", "v2"), _refused_by_the_schema),
    "a framework beside the containers": (_set("spec.predictor.onnx", {}), _refused_by_the_schema),
    "unknown scaleMetric": (_set("spec.predictor.scaleMetric", "gpu"), _refused_by_the_schema),
    "invalid name": (_set("metadata.name", "Genlab"), _refused_by_the_schema),
    "misspelt container field": (_rename(f"{CONTAINER}.livenessProbe", "livenessprobe"), _refused_by_kubernetes),
    "probe port as an object": (
        _set(f"{CONTAINER}.readinessProbe.httpGet.port", {"name": "http1"}),
        _refused_by_kubernetes,
    ),
    "port named http": (_set(f"{CONTAINER}.ports.0.name", "http"), _refused_by_knative),
    "pod-level securityContext": (_set("spec.predictor.securityContext", {"runAsNonRoot": True}), _refused_by_knative),
    "reserved env": (_set(f"{CONTAINER}.env.0", {"name": "PORT", "value": "3000"}), _refused_by_knative),
    "probe on a keyed path": (_set(f"{CONTAINER}.readinessProbe.httpGet.path", "/models"), _a_keyed_probe),
    "probe on the protocol's metadata": (_set(f"{CONTAINER}.livenessProbe.httpGet.path", "/v2"), _a_keyed_probe),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_manifest_is_refused(isvc, case):
    edit, refused = BROKEN[case]
    broken = copy.deepcopy(isvc)
    edit(broken)
    refused(broken)
