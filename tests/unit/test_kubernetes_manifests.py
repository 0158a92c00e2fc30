"""deploy/kubernetes/: every object checked against the Kubernetes API's own schemas
(kubernetes-validate, strict: unknown fields fail), then against each other and the
server: references resolve, probes and Service ports name real container ports, the
container's arguments parse with the server's own CLI and its environment loads."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fleetcast.server import cli as server_cli
from fleetcast.server import config as server_config

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"
# Read by the server once its PostgreSQL store is in (--store / FLEETCAST_STORE); until
# then the variable is passed and not yet read.
def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def server_deployment() -> dict[str, Any]:
    (deployment,) = of_kind("Deployment")
    return deployment


def containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def secret_keys() -> dict[str, set[str]]:
    return {s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {})) for s in of_kind("Secret")}


def test_kustomization_lists_every_manifest_in_the_directory() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_object_is_valid_against_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    broken = server_deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_server_runs_two_replicas_with_probes_on_readyz_and_healthz_and_resource_requests() -> None:
    deployment = server_deployment()
    assert deployment["spec"]["replicas"] == 2
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["httpGet"]["port"] in ports and server[probe]["httpGet"]["scheme"] == "HTTPS"
    for container in containers(deployment):
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]


def test_services_reach_named_container_ports_of_the_pods_they_select() -> None:
    deployment = server_deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    (service,) = of_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == ports == {"https", "grpc"}


def test_every_secret_and_config_map_reference_resolves() -> None:
    keys, maps = secret_keys(), {m["metadata"]["name"] for m in of_kind("ConfigMap")}
    deployment = server_deployment()
    for container in containers(deployment):
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in maps
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in keys[ref["name"]], var
    for volume in deployment["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            secret = volume["secret"]
            assert secret["secretName"] in keys
            assert {i["key"] for i in secret.get("items", [])} <= keys[secret["secretName"]]


def server_environment() -> dict[str, str]:
    """The server container's environment, Secret values filled in from the templates."""
    deployment = server_deployment()
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    maps = {m["metadata"]["name"]: m["data"] for m in of_kind("ConfigMap")}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in of_kind("Secret")}
    env = {}
    for source in server["envFrom"]:
        env.update(maps[source["configMapRef"]["name"]])
    for var in server["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = secrets[ref["name"]][ref["key"]] if ref else var["value"]
    return env


def test_the_server_accepts_its_arguments_and_environment(tmp_path: Path) -> None:
    (server,) = server_deployment()["spec"]["template"]["spec"]["containers"]
    assert server["command"] == ["fleetcast", "server"]
    args = server_cli.parser().parse_args(server["args"])
    assert str(args.data) == "/var/lib/fleetcast/data"
    env = server_environment()
    config = server_config.load(data_dir=tmp_path, environ=env)
    assert (config.http_host, config.http_port, config.grpc_host, config.grpc_port) == ("0.0.0.0", 8470, "0.0.0.0", 8471)
    assert config.tls and config.blobs_url.startswith("s3://") and config.mqtt_url == env["FLEETCAST_MQTT_URL"]
    assert config.s3_region == env["AWS_REGION"]
    assert config.store.startswith("postgresql://") and config.shared_store
    source = "\n".join(p.read_text() for p in (REPO / "server").rglob("*.py"))
    for name in {n for n in env if n.startswith("FLEETCAST_")}:
        assert f'"{name}"' in source, f"{name} is set in the manifests but the server never reads it"


def test_no_secret_reaches_a_command_line() -> None:
    secret_env = {var["name"] for c in containers(server_deployment()) for var in c.get("env", [])
                  if "valueFrom" in var}
    values = {v for s in of_kind("Secret") for v in s["stringData"].values()}
    for container in containers(server_deployment()):
        line = " ".join(container.get("command", []) + container.get("args", []))
        assert not any(f"$({name})" in line for name in secret_env), container["name"]
        assert not any(value in line for value in values if len(value) > 8), container["name"]
        assert not re.search(r"(password|secret|token)=", line, re.IGNORECASE), container["name"]
