"""deploy/k8s: linted, rendered, schema-checked, and held to what the code reads.

No cluster: every kustomization is rendered by a small kustomize written here, which knows
exactly the features deploy/k8s uses and refuses any other (so a new feature fails loudly
instead of rendering wrong). Where ``kubectl`` with kustomize 5 is on PATH (it is on this
project's machines; Debian's kubernetes-client 1.20 is too old for components and is not
used), every rendering is also made by ``kubectl kustomize`` and must be identical.

Then: yamllint on every file; every rendered object against the Kubernetes OpenAPI schema
(kubernetes-validate, strict: unknown fields are errors), and the custom resources (KEDA,
Prometheus Operator) field by field; each workload is given every CARVE_ variable it needs,
none that its service does not read, and values its Settings class accepts; probes, ports,
selectors, grace periods, pod security, Ingress paths and body size, network policies and
the KEDA trigger agree with the code.
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from pydantic import SecretStr
from pydantic_settings import BaseSettings
from yamllint import linter
from yamllint.config import YamlLintConfig

from services.assembler.settings import AssemblerSettings
from services.download.routes import setup_routes as download_routes
from services.download.settings import DownloadSettings
from services.events.settings import EventsServiceSettings
from services.ingest.routes import BLOCK_PATHS, START_PATHS
from services.ingest.settings import IngestSettings
from services.janitor.settings import JanitorSettings
from services.triage.rules import load_rules
from services.triage.settings import TriageSettings
from shared.health import _CHECK_TIMEOUT
from shared.protocol import max_block_body
from tests.kustomize import (
    Resource,
    json6902,
    kustomize,
    merge,
    name_hash,
    only,
    pod_specs,
    split_image,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAY = "overlays/example"
# The oldest Kubernetes these manifests claim (lifecycle.preStop.sleep needs 1.30+).
KUBERNETES_VERSION = "1.33.0"
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
# keda.sh/v1alpha1 ScaledObject spec fields (KEDA 2.x).
SCALED_OBJECT_FIELDS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}

SERVICES: dict[str, type[BaseSettings]] = {
    "carve-ingest": IngestSettings,
    "carve-assembler": AssemblerSettings,
    "carve-download": DownloadSettings,
    "carve-janitor": JanitorSettings,
    "carve-events": EventsServiceSettings,
    "carve-triage": TriageSettings,
}
# Services that take traffic through the Ingress, and so get a preStop pause.
PUBLISHED = {"carve-ingest", "carve-download"}
# Peak RSS measured by bench/ (docs/benchmarks), MiB: the memory request must cover it.
MEASURED_RSS_MIB = {"carve-ingest": 133, "carve-assembler": 153, "carve-download": 138}
# Ports each backend may listen on (plain, TLS); the first is the code's default.
BACKEND_PORTS = {
    "redis_url": [6379, 6380],
    "amqp_url": [5672, 5671],
    "mongo_url": [27017],
    "vault_addr": [8200, 443],
    "webhook_url": [443],  # carve-events: the webhook endpoints
}
DNS_PORTS = {("UDP", 53), ("TCP", 53)}
INGRESS_NAMESPACE = "ingress-nginx"
AUTH_TLS = "nginx.ingress.kubernetes.io/auth-tls-"
MONITORING_NAMESPACE = "monitoring"


# --- rendering targets ------------------------------------------------------------------


def _kubectl() -> str | None:
    """kubectl whose kustomize is v5 or later (components, labels, patches), else None."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    match = re.match(r"v(\d+)\.", version)
    return kubectl if match and int(match[1]) >= 5 else None


def _key(resource: Resource) -> tuple[str, str, str, str]:
    metadata = resource["metadata"]
    return resource["apiVersion"], resource["kind"], metadata.get("namespace", ""), metadata["name"]


def _normalized(resources: list[Resource]) -> dict[tuple[str, str, str, str], Resource]:
    """Keyed by identity; Secret data compared decoded (kubectl wraps long base64 lines)."""
    result = {}
    for resource in resources:
        resource = copy.deepcopy(resource)
        if resource["kind"] == "Secret":
            data = resource.get("data", {})
            resource["data"] = {k: base64.b64decode("".join(v.split())) for k, v in data.items()}
        result[_key(resource)] = resource
    return result


def render(directory: Path) -> list[Resource]:
    resources = kustomize(directory)
    kubectl = _kubectl()
    if kubectl is not None:
        out = subprocess.run(
            [kubectl, "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        theirs = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
        assert _normalized(resources) == _normalized(theirs), "renderer and kubectl disagree"
    return resources


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/k8s with the overlay's gitignored secrets/*.env made from their examples,
    as an operator does before applying it."""
    copy_root = tmp_path_factory.mktemp("k8s") / "k8s"

    def real_secrets(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(directory).name == "secrets" and n.endswith(".env")]

    shutil.copytree(K8S, copy_root, ignore=real_secrets)  # never copy an operator's secrets
    for example in (copy_root / OVERLAY / "secrets").glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    return copy_root


@pytest.fixture(scope="module")
def renders(k8s_copy: Path) -> dict[str, list[Resource]]:
    return {"base": render(k8s_copy / "base"), "example": render(k8s_copy / OVERLAY)}


@pytest.fixture(params=["base", "example"])
def rendered(request: pytest.FixtureRequest, renders: dict[str, list[Resource]]) -> Rendering:
    return Rendering(request.param, renders[request.param])


@dataclass
class Workload:
    resource: Resource
    pod: dict[str, Any]
    container: dict[str, Any]

    @property
    def service(self) -> str:
        return str(self.container["command"][0])

    @property
    def settings_class(self) -> type[BaseSettings]:
        return SERVICES[self.service]

    @property
    def reads(self) -> set[str]:
        return {f"CARVE_{name.upper()}" for name in self.settings_class.model_fields}


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass
class Rendering:
    target: str
    resources: list[Resource]

    def of_kind(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r["kind"] == kind]

    def get(self, kind: str, name: str) -> Resource:
        (found,) = [r for r in self.of_kind(kind) if r["metadata"]["name"] == name]
        return found

    def workloads(self) -> list[Workload]:
        found = []
        for resource in self.resources:
            for pod in pod_specs(resource):
                (container,) = pod["containers"]
                found.append(Workload(resource, pod, container))
        assert {w.service for w in found} == set(SERVICES)
        return found

    def workload(self, service: str) -> Workload:
        (found,) = [w for w in self.workloads() if w.service == service]
        return found

    def environment(self, workload: Workload) -> dict[str, str | SecretRef]:
        """Every variable the container gets, resolved through the rendered ConfigMaps."""
        env: dict[str, str | SecretRef] = {}
        for source in workload.container.get("envFrom", []):
            assert set(source) == {"configMapRef"}, "Secrets only by secretKeyRef, by name"
            data = self.get("ConfigMap", source["configMapRef"]["name"])["data"]
            assert not set(data) & set(env), f"set twice: {set(data) & set(env)}"
            env.update(data)
        for variable in workload.container.get("env", []):
            assert variable["name"] not in env, f"set twice: {variable['name']}"
            env[variable["name"]] = self._value(variable)
        return env

    def _value(self, variable: dict[str, Any]) -> str | SecretRef:
        if "value" in variable:
            return str(variable["value"])
        source = variable["valueFrom"]
        if "secretKeyRef" in source:
            return SecretRef(source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
        if "fieldRef" in source:  # the downward API: the same reference, a value per pod
            return f"fieldRef:{source['fieldRef']['fieldPath']}"
        ref = source["configMapKeyRef"]
        return str(self.get("ConfigMap", ref["name"])["data"][ref["key"]])

    def secret_value(self, ref: SecretRef) -> str | None:
        """The value where the rendering holds the Secret (the overlay's), else None."""
        secrets = [s for s in self.of_kind("Secret") if s["metadata"]["name"] == ref.name]
        if not secrets:
            return None
        return base64.b64decode(secrets[0]["data"][ref.key]).decode()

    def plain(self, workload: Workload) -> dict[str, str]:
        return {k: v for k, v in self.environment(workload).items() if isinstance(v, str)}


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    only(selector, {"matchLabels"}, "label selector")
    wanted: dict[str, str] = selector.get("matchLabels", {})
    return wanted.items() <= labels.items()


def pod_labels(resource: Resource) -> dict[str, str]:
    if resource["kind"] == "CronJob":
        template = resource["spec"]["jobTemplate"]["spec"]["template"]
    else:
        template = resource["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


# --- the renderer itself ----------------------------------------------------------------


def test_name_hash_is_kustomizes() -> None:
    # Suffix that kubectl 1.32 (kustomize v5.5.0) gave the base's ConfigMap carve-amqp.
    config_map = {"kind": "ConfigMap", "metadata": {"name": "carve-amqp"}}
    config_map["data"] = {"CARVE_AMQP_QUEUE": "carve.blocks", "CARVE_AMQP_CONNECT_TIMEOUT": "5.0"}
    assert name_hash(config_map) == "f48tk8mm2b"


def test_renderer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamePrefix: x-\n"
    )
    with pytest.raises(NotImplementedError, match="namePrefix"):
        kustomize(tmp_path)


def test_renderer_applies_json_and_merge_patches() -> None:
    resources: list[Resource] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}
    ]
    resources[0]["spec"] = {"replicas": 2, "template": {"spec": {"containers": [{"name": "c"}]}}}
    operations: list[dict[str, Any]] = [
        {"op": "remove", "path": "/spec/replicas"},
        {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "e"}},
        {"op": "replace", "path": "/spec/template/spec/containers/0/name", "value": "f"},
    ]
    for operation in operations:
        json6902(resources[0], operation)
    merge(resources[0], {"metadata": {"labels": {"a": "b"}}, "spec": {"paused": True}})
    assert resources[0]["spec"] == {
        "paused": True,
        "template": {"spec": {"containers": [{"name": "f"}, {"name": "e"}]}},
    }
    assert resources[0]["metadata"] == {"name": "d", "labels": {"a": "b"}}
    with pytest.raises(KeyError):
        json6902(resources[0], {"op": "remove", "path": "/spec/replicas"})


# --- files ------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"})


def test_yamllint_finds_nothing() -> None:
    config = YamlLintConfig(file=str(K8S / ".yamllint"))
    problems = []
    for path in [*_yaml_files(), K8S / ".yamllint"]:
        for problem in linter.run(path.read_text(), config, str(path)):
            problems.append(f"{path.relative_to(ROOT)}:{problem.line}: {problem}")
    assert problems == []


def _kustomizations() -> list[tuple[Path, dict[str, Any]]]:
    return [(p.parent, yaml.safe_load(p.read_text())) for p in K8S.rglob("kustomization.yaml")]


def test_every_manifest_file_is_used() -> None:
    used = set()
    for directory, spec in _kustomizations():
        used |= {(directory / entry).resolve() for entry in spec.get("resources", [])}
        used |= {(directory / p["path"]).resolve() for p in spec.get("patches", []) if "path" in p}
    manifests = {p.resolve() for p in _yaml_files() if p.name != "kustomization.yaml"}
    assert manifests - used == set(), "files no kustomization refers to"


def test_no_secret_values_are_committed() -> None:
    for path in _yaml_files():
        for document in yaml.safe_load_all(path.read_text()):
            assert not (document and document.get("kind") == "Secret"), path
    env_files = []
    for directory, spec in _kustomizations():
        for generator in spec.get("secretGenerator", []):
            env_files += [directory / env for env in generator["envs"]]
    assert env_files, "the example overlay generates its Secrets from files"
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *map(str, env_files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sorted(ignored.stdout.split()) == sorted(map(str, env_files)), "must be gitignored"
    for env_file in env_files:
        example = env_file.with_name(env_file.name + ".example").read_text()
        values = [line for line in example.splitlines() if line and not line.startswith("#")]
        assert values and all("CHANGE-ME" in line for line in values), env_file


# --- schemas ----------------------------------------------------------------------------


def test_every_object_matches_the_kubernetes_schema(rendered: Rendering) -> None:
    errors = []
    for resource in rendered.resources:
        if resource["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{resource['kind']}/{resource['metadata']['name']}: {exc.message}")
    assert errors == []


def test_the_example_uses_every_component(renders: dict[str, list[Resource]]) -> None:
    """So that the custom resources, which no schema checks, are checked below."""
    assert CUSTOM_KINDS <= {r["kind"] for r in renders["example"]}
    assert not CUSTOM_KINDS & {r["kind"] for r in renders["base"]}


def test_keda_scales_the_assembler_on_the_block_queue(renders: dict[str, list[Resource]]) -> None:
    rendering = Rendering("example", renders["example"])
    scaled = rendering.get("ScaledObject", "carve-assembler")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_FIELDS, set(spec) - SCALED_OBJECT_FIELDS
    assembler = rendering.workload("carve-assembler")
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == assembler.resource["metadata"]["name"]
    assert "replicas" not in assembler.resource["spec"], "KEDA's HPA owns the count"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "rabbitmq"
    metadata = trigger["metadata"]
    assert metadata["protocol"] == "amqp" and metadata["mode"] == "QueueLength"
    assert int(metadata["value"]) > 0
    env = rendering.environment(assembler)
    default_queue = AssemblerSettings.model_fields["amqp_queue"].default
    assert metadata["queueName"] == env.get("CARVE_AMQP_QUEUE", default_queue)
    auth = rendering.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert set(auth["spec"]) == {"secretTargetRef"}
    (ref,) = auth["spec"]["secretTargetRef"]
    assert set(ref) == {"parameter", "name", "key"} and ref["parameter"] == "host"
    assert SecretRef(ref["name"], ref["key"]) == env["CARVE_AMQP_URL"]
    for hpa in rendering.of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] != target["name"], "two autoscalers"


def test_keda_scales_triage_on_its_own_queue(renders: dict[str, list[Resource]]) -> None:
    rendering = Rendering("example", renders["example"])
    scaled = rendering.get("ScaledObject", "carve-triage")
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_FIELDS, set(spec) - SCALED_OBJECT_FIELDS
    triage = rendering.workload("carve-triage")
    assert spec["scaleTargetRef"]["name"] == triage.resource["metadata"]["name"]
    assert "replicas" not in triage.resource["spec"], "KEDA's HPA owns the count"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    env = rendering.environment(triage)
    default_queue = TriageSettings.model_fields["triage_queue"].default
    assert trigger["metadata"]["queueName"] == env.get("CARVE_TRIAGE_QUEUE", default_queue)
    assert trigger["metadata"]["mode"] == "QueueLength" and int(trigger["metadata"]["value"]) > 0
    assert trigger["authenticationRef"]["name"] == "carve-rabbitmq"


def test_triage_mounts_its_rules_from_a_config_map_that_compiles(
    renders: dict[str, list[Resource]], tmp_path: Path
) -> None:
    rendering = Rendering("base", renders["base"])
    triage = rendering.workload("carve-triage").resource["spec"]["template"]["spec"]
    (container,) = triage["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = rendering.environment(rendering.workload("carve-triage"))
    assert mounts["rules"] == env["CARVE_TRIAGE_RULES"]
    assert mounts["hashsets"] == env["CARVE_TRIAGE_HASHSETS"]
    (volume,) = [v for v in triage["volumes"] if v["name"] == "rules"]
    rules = rendering.get("ConfigMap", volume["configMap"]["name"])
    for name, text in rules["data"].items():
        (tmp_path / name).write_text(text)
    assert load_rules(str(tmp_path)).count >= 1  # the example compiles with YARA-X


def test_keda_passes_a_valid_hpa_to_kubernetes(renders: dict[str, list[Resource]]) -> None:
    """KEDA copies advanced.horizontalPodAutoscalerConfig into the HPA it makes: check it
    against the HorizontalPodAutoscaler schema."""
    scaled = Rendering("example", renders["example"]).get("ScaledObject", "carve-assembler")
    config = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert set(config) <= {"behavior", "name"}
    hpa: dict[str, Any] = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"}
    hpa["metadata"] = {"name": scaled["metadata"]["name"]}
    hpa["spec"] = {"scaleTargetRef": scaled["spec"]["scaleTargetRef"], "maxReplicas": 2}
    hpa["spec"]["behavior"] = config["behavior"]
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_the_prometheus_rule_ships_the_alerts_file(renders: dict[str, list[Resource]]) -> None:
    """deploy/observability/alerts.yaml, unchanged by the overlay (tests/unit/test_observability.py
    runs promtool on it)."""
    (rule,) = Rendering("example", renders["example"]).of_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "osquery-carves"
    plain = yaml.safe_load((ROOT / "deploy" / "observability" / "alerts.yaml").read_text())
    assert rule["spec"] == plain


def test_service_monitor_scrapes_every_metrics_service(
    renders: dict[str, list[Resource]],
) -> None:
    rendering = Rendering("example", renders["example"])
    (monitor,) = rendering.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [
        s
        for s in rendering.of_kind("Service")
        if labels_match(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in selected} == {
        "carve-ingest",
        "carve-assembler",
        "carve-download",
        "carve-events",
        "carve-triage",
    }
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    assert endpoint["path"] == "/metrics"
    for service in selected:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


# --- workloads and the settings they read -----------------------------------------------


def test_commands_are_console_scripts(rendered: Rendering) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for workload in rendered.workloads():
        assert workload.service in scripts
    janitor = rendered.workload("carve-janitor")
    assert janitor.resource["kind"] == "CronJob"
    assert janitor.container["command"] == ["carve-janitor", "--once"]
    for service in set(SERVICES) - {"carve-janitor"}:
        assert rendered.workload(service).resource["kind"] == "Deployment"
        assert rendered.workload(service).container["command"] == [service]
        assert "args" not in rendered.workload(service).container


def test_every_variable_set_is_one_the_service_reads(rendered: Rendering) -> None:
    for workload in rendered.workloads():
        unknown = set(rendered.environment(workload)) - workload.reads
        assert unknown == set(), f"{workload.service} does not read {sorted(unknown)}"


def _loopback_defaults(settings_class: type[BaseSettings]) -> set[str]:
    """Settings whose default only works on one machine (127.0.0.1): a pod must set them."""
    found = set()
    for name, field_info in settings_class.model_fields.items():
        default = field_info.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if isinstance(default, str) and "127.0.0.1" in default:
            found.add(name)
    return found


def test_every_variable_without_a_usable_default_is_set(rendered: Rendering) -> None:
    for workload in rendered.workloads():
        env = rendered.environment(workload)
        for name in _loopback_defaults(workload.settings_class):
            variable = f"CARVE_{name.upper()}"
            assert variable in env, f"{workload.service} needs {variable}"
            value = env[variable]
            if name == "http_host":
                assert value == "0.0.0.0", workload.service
            elif name.endswith("_url"):
                assert isinstance(value, SecretRef), f"{variable} can hold a password"
            else:
                assert isinstance(value, str) and value.startswith("https://"), variable


# Public addresses named *_URL: the console's, for links in chat messages.
PUBLIC_URLS = {"CARVE_CONSOLE_URL"}


def test_urls_come_from_secrets_only(rendered: Rendering) -> None:
    """URLs (they carry passwords) and keys come from Secrets, everything else never does."""
    for workload in rendered.workloads():
        for variable, value in rendered.environment(workload).items():
            secret = variable.endswith(("_URL", "_SECRET")) and variable not in PUBLIC_URLS
            assert isinstance(value, SecretRef) is secret, f"{workload.service}: {variable}"


def _settings(
    rendering: Rendering, workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> BaseSettings:
    """The service's Settings, made from exactly the container's environment (a Secret's
    value from the overlay, or the code's default URL where the base only names it)."""
    for variable in [v for v in os.environ if v.startswith("CARVE_")]:
        monkeypatch.delenv(variable)
    for variable, value in rendering.environment(workload).items():
        text: str | None = value if isinstance(value, str) else None
        if isinstance(value, SecretRef):
            default = workload.settings_class.model_fields[variable[6:].lower()].default
            fallback = default.get_secret_value() if default is not None else None
            text = rendering.secret_value(value) or fallback
        if text is not None:  # None: an optional Secret the base only names, and no default
            monkeypatch.setenv(variable, text)
    return workload.settings_class()


def test_values_are_accepted_by_the_settings(
    rendered: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload in rendered.workloads():
        settings = _settings(rendered, workload, monkeypatch)
        assert getattr(settings, "log_json", None) is True, workload.service


def test_shared_settings_agree_between_services(rendered: Rendering) -> None:
    seen: dict[str, tuple[str, str | SecretRef]] = {}
    for workload in rendered.workloads():
        for variable, value in rendered.environment(workload).items():
            first = seen.setdefault(variable, (workload.service, value))
            assert first[1] == value, f"{variable}: {first[0]} and {workload.service} differ"


def _http_port(rendering: Rendering, workload: Workload) -> int:
    default = workload.settings_class.model_fields["http_port"].default
    return int(rendering.plain(workload).get("CARVE_HTTP_PORT", default))


def _ports(workload: Workload) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in workload.container["ports"]}


def test_probes_and_ports_point_at_the_service(rendered: Rendering) -> None:
    for workload in rendered.workloads():
        if workload.resource["kind"] == "CronJob":
            assert "ports" not in workload.container, "--once serves nothing"
            continue
        ports = _ports(workload)
        metrics_port = int(rendered.plain(workload)["CARVE_METRICS_PORT"])
        assert ports == {"http": _http_port(rendered, workload), "metrics": metrics_port}
        expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz"}
        expected["readinessProbe"] = "/readyz"
        for probe, path in expected.items():
            get = workload.container[probe]["httpGet"]
            assert get["path"] == path, f"{workload.service} {probe}"
            assert get["port"] in {"http", ports["http"]}, workload.service
        readiness = workload.container["readinessProbe"]
        assert readiness["timeoutSeconds"] > _CHECK_TIMEOUT, "/readyz takes up to that"
        annotations = workload.resource["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_selectors_match_pod_labels(rendered: Rendering) -> None:
    workloads = rendered.workloads()
    for workload in workloads:
        if workload.resource["kind"] == "Deployment":
            selector = workload.resource["spec"]["selector"]
            assert labels_match(selector, pod_labels(workload.resource)), workload.service
    for kind in ("Service", "PodDisruptionBudget"):
        for resource in rendered.of_kind(kind):
            spec = resource["spec"]
            selector = (
                spec["selector"]
                if kind == "PodDisruptionBudget"
                else {"matchLabels": spec["selector"]}
            )
            matched = [w for w in workloads if labels_match(selector, pod_labels(w.resource))]
            assert len(matched) == 1, f"{kind}/{resource['metadata']['name']}"
            if kind == "Service":
                names = {p["name"] for p in matched[0].container["ports"]}
                assert {p["targetPort"] for p in spec["ports"]} <= names


def test_autoscalers_own_the_replica_count(rendered: Rendering) -> None:
    targets = [h["spec"]["scaleTargetRef"] for h in rendered.of_kind("HorizontalPodAutoscaler")]
    assert {t["name"] for t in targets} == {"carve-ingest", "carve-download"}
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        assert spec["minReplicas"] >= 2 and spec["maxReplicas"] > spec["minReplicas"]
        (metric,) = spec["metrics"]
        assert metric["resource"]["name"] == "cpu"
        deployment = rendered.get("Deployment", spec["scaleTargetRef"]["name"])
        assert "replicas" not in deployment["spec"], "an apply would reset the HPA's count"


def _pre_stop_sleep(workload: Workload) -> int:
    pre_stop = workload.container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0
    return int(pre_stop["sleep"]["seconds"])


@functools.cache
def _shutdown_expression(service: str) -> ast.expr:
    """The ``shutdown_timeout=`` argument of ``serve(...)`` in the service's __main__."""
    module = SERVICES[service].__module__.replace(".settings", ".__main__")
    tree = ast.parse((ROOT / Path(*module.split("."))).with_suffix(".py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "serve":
            (keyword,) = [k for k in node.keywords if k.arg == "shutdown_timeout"]
            return keyword.value
    raise LookupError(f"{module} calls no serve()")


def test_grace_period_covers_the_shutdown(
    rendered: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload in rendered.workloads():
        if workload.resource["kind"] == "CronJob":
            continue
        settings = _settings(rendered, workload, monkeypatch)
        expression = ast.Expression(_shutdown_expression(workload.service))
        shutdown = eval(compile(expression, "<shutdown>", "eval"), {"settings": settings})
        pre_stop = _pre_stop_sleep(workload)
        assert (pre_stop > 0) is (workload.service in PUBLISHED), workload.service
        grace = workload.pod["terminationGracePeriodSeconds"]
        assert grace >= pre_stop + shutdown + 5, f"{workload.service}: {grace} s"


def test_janitor_cronjob(rendered: Rendering) -> None:
    (cronjob,) = rendered.of_kind("CronJob")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < 300
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"


# --- pod security and resources ---------------------------------------------------------


def _dockerfile_uid() -> int:
    users = re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return int(users[-1])


def test_pods_are_restricted(rendered: Rendering) -> None:
    for workload in rendered.workloads():
        pod = workload.pod
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False, "service links inject CARVE_* variables"
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == _dockerfile_uid()
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        container = workload.container["securityContext"]
        assert container["allowPrivilegeEscalation"] is False
        assert container["readOnlyRootFilesystem"] is True
        assert container["capabilities"] == {"drop": ["ALL"]}
        assert not pod.get("hostNetwork") and not pod.get("hostPID")
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "projected"}


def _quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(value))
    assert match, value
    return float(match[1]) * units[match[2]]


def test_resources_are_sized_from_the_measurements(rendered: Rendering) -> None:
    for workload in rendered.workloads():
        resources = workload.container["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}, workload.service
        requests = {k: _quantity(v) for k, v in resources["requests"].items()}
        limits = {k: _quantity(v) for k, v in resources["limits"].items()}
        assert all(limits[k] >= requests[k] for k in requests), workload.service
        measured = MEASURED_RSS_MIB.get(workload.service)
        if measured is not None:
            assert requests["memory"] >= measured * 2**20, workload.service
            assert limits["memory"] >= 2 * measured * 2**20, workload.service


def test_one_image_for_every_workload(rendered: Rendering) -> None:
    images = {w.container["image"] for w in rendered.workloads()}
    (image,) = images
    name, tag, digest = split_image(image)
    assert tag or digest, "never :latest"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    if rendered.target == "base":
        assert (name, tag) == ("osquery-carve-server", version)
    else:
        assert "/" in name, "the overlay names a registry"
    assert {w.container["imagePullPolicy"] for w in rendered.workloads()} == {"IfNotPresent"}


# --- Ingress ----------------------------------------------------------------------------


def _paths(ingress: Resource) -> list[dict[str, Any]]:
    (rule,) = ingress["spec"]["rules"]
    paths: list[dict[str, Any]] = rule["http"]["paths"]
    return paths


def _tls_hosts(ingress: Resource) -> set[str]:
    return {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}


def _osquery_ingress(rendered: Rendering) -> Resource:
    return rendered.get("Ingress", "carve-osquery")


def test_osquery_ingress_requires_client_certificates(rendered: Rendering) -> None:
    ingress = _osquery_ingress(rendered)
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-tls-verify-client"] == "on"
    namespace, _, secret = annotations["nginx.ingress.kubernetes.io/auth-tls-secret"].partition("/")
    assert namespace and secret, "<namespace>/<name>"
    if "namespace" in ingress["metadata"]:
        assert namespace == ingress["metadata"]["namespace"], "the CA Secret's namespace"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] in _tls_hosts(ingress)


def test_osquery_ingress_passes_the_verified_certificate_to_the_ingest(
    rendered: Rendering,
) -> None:
    """ingress-nginx sets ssl-client-cert/-verify/-subject-dn/-issuer-dn (over anything the
    client sent) only on an Ingress that verifies client certificates, and ssl-client-cert
    only with pass-certificate-to-upstream: every path to the ingest must be on such a one."""
    to_ingest = 0
    for ingress in rendered.of_kind("Ingress"):
        annotations = ingress["metadata"].get("annotations", {})
        for path in _paths(ingress):
            if path["backend"]["service"]["name"] != "carve-ingest":
                continue
            to_ingest += 1
            assert annotations.get(f"{AUTH_TLS}verify-client") == "on", ingress["metadata"]
            assert annotations.get(f"{AUTH_TLS}pass-certificate-to-upstream") == "true"
    assert to_ingest == len(START_PATHS) + len(BLOCK_PATHS)


def test_ingest_and_download_trust_the_same_proxies(rendered: Rendering) -> None:
    """One setting for the ingress controller's addresses: the ingest takes the ssl-client-*
    headers from there, the download service X-Forwarded-For."""
    values = set()
    for service in ("carve-ingest", "carve-download"):
        workload = rendered.workload(service)
        sources = [s["configMapRef"]["name"] for s in workload.container["envFrom"]]
        (config_map,) = [
            name
            for name in sources
            if "CARVE_TRUSTED_PROXIES" in rendered.get("ConfigMap", name)["data"]
        ]
        assert config_map.startswith("carve-proxies"), service
        values.add(rendered.plain(workload)["CARVE_TRUSTED_PROXIES"])
    (value,) = values
    if rendered.target == "base":
        assert value == "", "headers are ignored until an overlay names the controller"
    else:
        networks = [ipaddress.ip_network(v.strip()) for v in value.split(",")]
        assert networks and all(n.is_private for n in networks), value
    for service in ("carve-assembler", "carve-janitor"):
        assert "CARVE_TRUSTED_PROXIES" not in rendered.environment(rendered.workload(service))


def test_the_client_ca_secret_is_documented_with_its_crl() -> None:
    """The CRL lives in the auth-tls Secret under ca.crl (ingress-nginx's key), beside ca.crt."""
    text = (K8S / "base" / "ingress.yaml").read_text()
    assert "ca.crt" in text and "ca.crl" in text
    readme = (K8S / "README.md").read_text()
    assert "--from-file=ca.crl=" in readme and "carve-osquery-client-ca" in readme


def test_osquery_ingress_routes_exactly_the_osquery_paths(rendered: Rendering) -> None:
    paths = _paths(_osquery_ingress(rendered))
    expected = set(START_PATHS.values()) | set(BLOCK_PATHS.values())
    assert {p["path"] for p in paths} == expected
    for path in paths:
        assert path["pathType"] == "Exact"
        assert path["backend"]["service"] == {"name": "carve-ingest", "port": {"name": "http"}}


def _body_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, value
    return int(match[1]) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match[2].lower()]


def test_osquery_ingress_body_size_fits_the_largest_block(rendered: Rendering) -> None:
    ingest = rendered.workload("carve-ingest")
    env = rendered.plain(ingest)
    block_size = int(
        env.get("CARVE_MAX_BLOCK_SIZE", IngestSettings.model_fields["max_block_size"].default)
    )
    annotations = _osquery_ingress(rendered)["metadata"]["annotations"]
    limit = _body_size(annotations["nginx.ingress.kubernetes.io/proxy-body-size"])
    needed = max_block_body(block_size)
    assert needed <= limit <= needed + 2**20, f"{limit} for {needed}"


def _download_route_paths() -> list[str]:
    app = web.Application()
    download_routes(app)
    return sorted({r.canonical for r in app.router.resources()})


def test_responder_ingress_publishes_the_download_api_only(rendered: Rendering) -> None:
    ingress = rendered.get("Ingress", "carve-responders")
    annotations = ingress["metadata"].get("annotations", {})
    assert not [a for a in annotations if "auth-tls" in a], "responders use Vault tokens"
    paths = _paths(ingress)
    for path in paths:
        assert path["backend"]["service"] == {"name": "carve-download", "port": {"name": "http"}}
        assert path["pathType"] in {"Exact", "Prefix"}

    def published(route: str) -> bool:
        for p in paths:
            prefix = p["path"].rstrip("/") + "/"
            if route == p["path"] or (p["pathType"] == "Prefix" and route.startswith(prefix)):
                return True
        return False

    routes = _download_route_paths()
    assert all(published(route) for route in routes), routes
    assert not any(published(p) for p in ("/metrics", "/healthz", "/readyz"))
    osquery = _osquery_ingress(rendered)
    assert not _tls_hosts(ingress) & _tls_hosts(osquery), "mutual TLS is per host name"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] in _tls_hosts(ingress)


# --- NetworkPolicies --------------------------------------------------------------------


def _policies_for(rendering: Rendering, workload: Workload) -> list[Resource]:
    labels = pod_labels(workload.resource)
    return [
        p
        for p in rendering.of_kind("NetworkPolicy")
        if labels_match(p["spec"]["podSelector"], labels)
    ]


def _egress_ports(policies: list[Resource]) -> set[tuple[str, int]]:
    ports = set()
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            assert "to" not in rule or rule["to"], "an empty 'to' allows everything"
            for port in rule["ports"]:
                ports.add((port["protocol"], port["port"]))
    return ports


def test_network_policies_deny_by_default(rendered: Rendering) -> None:
    defaults = [p for p in rendered.of_kind("NetworkPolicy") if p["spec"]["podSelector"] == {}]
    (default,) = defaults
    assert set(default["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in default["spec"] and "egress" not in default["spec"]


def _peer_namespace(peer: dict[str, Any]) -> str:
    return str(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])


def test_only_ingest_and_download_are_reachable_from_the_ingress(rendered: Rendering) -> None:
    for workload in rendered.workloads():
        policies = _policies_for(rendered, workload)
        assert len(policies) == 2, f"{workload.service}: default deny and its own"
        rules = [r for p in policies for r in p["spec"].get("ingress", [])]
        reach: dict[str, set[str]] = {}
        for rule in rules:
            assert rule.get("from") and rule.get("ports"), "no open peers, no open ports"
            for peer in rule["from"]:
                for port in rule["ports"]:
                    reach.setdefault(port["port"], set()).add(_peer_namespace(peer))
        if workload.service in PUBLISHED:
            assert reach == {"http": {INGRESS_NAMESPACE}, "metrics": {MONITORING_NAMESPACE}}
        elif workload.resource["kind"] == "Deployment":
            assert reach == {"metrics": {MONITORING_NAMESPACE}}, workload.service
        else:
            assert reach == {}, workload.service


def _admits(rule: dict[str, Any], port: dict[str, Any]) -> bool:
    """Whether a NetworkPolicy ingress rule lets connections reach the container ``port``."""
    if not rule.get("ports"):
        return True  # no ports: every port
    return any(p["port"] in (port["name"], port["containerPort"]) for p in rule["ports"])


def _controller_pods(peer: dict[str, Any]) -> bool:
    """A peer that is exactly the ingress controller's pods: its namespace AND its label."""
    return set(peer) == {"namespaceSelector", "podSelector"} and (
        _peer_namespace(peer) == INGRESS_NAMESPACE
        and peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}
    )


def test_only_the_ingress_controller_reaches_where_certificate_headers_are_believed(
    rendered: Rendering,
) -> None:
    """The ingest takes the device certificate from ssl-client-* headers sent from
    CARVE_TRUSTED_PROXIES, a pod network range: any pod of that range that reaches the
    osquery endpoints could claim any device. So every peer that a NetworkPolicy lets reach
    the port serving them (the one /start_uploads is on: CARVE_HTTP_PORT) must be the
    controller's pods; monitoring gets a metrics-only port. A namespace-wide peer, an
    ipBlock or a rule open to all fails here."""
    ingest = rendered.workload("carve-ingest")
    (osquery_port,) = [
        p for p in ingest.container["ports"] if p["containerPort"] == _http_port(rendered, ingest)
    ]
    assert osquery_port["name"] == "http"
    rules = [r for p in _policies_for(rendered, ingest) for r in p["spec"].get("ingress", [])]
    peers = [peer for rule in rules if _admits(rule, osquery_port) for peer in rule["from"]]
    assert peers, "the ingress controller must reach the ingest"
    broad = [peer for peer in peers if not _controller_pods(peer)]
    assert broad == [], f"more than the ingress controller reaches the osquery endpoints: {broad}"
    assert int(rendered.plain(ingest)["CARVE_METRICS_PORT"]) != osquery_port["containerPort"]
    (service,) = [s for s in rendered.of_kind("Service") if s["metadata"]["name"] == "carve-ingest"]
    assert service["spec"]["type"] == "ClusterIP", "no node port or load balancer around it"


def test_the_responder_ingress_keeps_tickets_out_of_the_access_log(rendered: Rendering) -> None:
    ingress = rendered.get("Ingress", "carve-responders")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/enable-access-log"] == "false"


def test_egress_only_to_the_backends_the_service_uses(rendered: Rendering) -> None:
    for workload in rendered.workloads():
        fields = set(workload.settings_class.model_fields)
        backends = [name for name in BACKEND_PORTS if name in fields]
        allowed = _egress_ports(_policies_for(rendered, workload))
        needed = DNS_PORTS | {("TCP", BACKEND_PORTS[name][0]) for name in backends}
        permitted = DNS_PORTS | {("TCP", p) for name in backends for p in BACKEND_PORTS[name]}
        assert needed <= allowed <= permitted, f"{workload.service}: {sorted(allowed)}"
