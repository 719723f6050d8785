"""A small kustomize: exactly the features deploy/k8s uses, and an error for any other.

Debian's kubectl (kubernetes-client 1.20) is too old for components and ``labels``, so the
tests render the kustomizations with this (and compare with ``kubectl kustomize`` where a
recent kubectl is on PATH; see tests/unit/test_k8s.py).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "labels",
    "images",
    "configMapGenerator",
    "secretGenerator",
    "patches",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


@dataclass
class Built:
    resources: list[Resource] = field(default_factory=list)
    hashed: list[Resource] = field(default_factory=list)  # generated, name gets a hash suffix


def only(mapping: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(mapping) - allowed
    if unknown:
        raise NotImplementedError(f"{what}: {sorted(unknown)} not supported by this renderer")


def _load_kustomization(directory: Path, kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    only(spec, KUSTOMIZATION_FIELDS, f"{directory}/kustomization.yaml")
    group = "v1beta1" if kind == "Kustomization" else "v1alpha1"
    assert spec["apiVersion"] == f"kustomize.config.k8s.io/{group}", directory
    assert spec["kind"] == kind, directory
    return spec


def kustomize(directory: Path) -> list[Resource]:
    built = _build(directory, "Kustomization", Built())
    _add_name_hashes(built)
    return built.resources


def _build(directory: Path, kind: str, built: Built) -> Built:
    """Resources, then components, then this level's generators, then its transformers."""
    spec = _load_kustomization(directory, kind)
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            inner = _build(path, "Kustomization", Built())
            built.resources += inner.resources
            built.hashed += inner.hashed
        else:
            built.resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for component in spec.get("components", []):
        _build(directory / component, "Component", built)  # applies to what is there so far
    for generator in spec.get("configMapGenerator", []):
        _generate(directory, generator, "ConfigMap", built)
    for generator in spec.get("secretGenerator", []):
        _generate(directory, generator, "Secret", built)
    _transform(directory, spec, built.resources)
    return built


def _transform(directory: Path, spec: dict[str, Any], resources: list[Resource]) -> None:
    """In kustomize's order: patches, namespace, labels, images."""
    for patch in spec.get("patches", []):
        _patch(directory, patch, resources)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = spec["namespace"]
    for labels in spec.get("labels", []):
        _label(labels, resources)
    for image in spec.get("images", []):
        _set_image(image, resources)


def _generator_data(directory: Path, generator: dict[str, Any]) -> dict[str, str]:
    lines = list(generator.get("literals", []))
    for env_file in generator.get("envs", []):
        for line in (directory / env_file).read_text().splitlines():
            line = line.lstrip()
            if line and not line.startswith("#"):
                lines.append(line)
    data = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or value[:1] in {'"', "'"}:
            raise NotImplementedError(f"generator line {line!r}: only KEY=VALUE, unquoted")
        data[key] = value
    for entry in generator.get("files", []):
        # kustomize's "files": the key is the file's name (or KEY=path), the value its text.
        key, sep, path = entry.partition("=")
        path = path if sep else key
        data[Path(key).name if not sep else key] = (directory / path).read_text()
    return data


def _generate(directory: Path, generator: dict[str, Any], kind: str, built: Built) -> None:
    only(generator, {"name", "behavior", "envs", "files", "literals", "options"}, "generator")
    options = generator.get("options", {})
    only(options, {"disableNameSuffixHash"}, "generator options")
    data = _generator_data(directory, generator)
    if kind == "Secret":
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    behavior = generator.get("behavior", "create")
    if behavior == "create":
        resource: Resource = {"apiVersion": "v1", "kind": kind, "metadata": {}, "data": {}}
        resource["metadata"]["name"] = generator["name"]
        if kind == "Secret":
            resource["type"] = "Opaque"
        built.resources.append(resource)
        built.hashed.append(resource)
    else:
        (resource,) = _select(built.resources, {"kind": kind, "name": generator["name"]})
        if behavior == "replace":
            resource["data"] = {}
    resource["data"].update(data)
    if options.get("disableNameSuffixHash"):
        built.hashed = [r for r in built.hashed if r is not resource]


def _select(resources: list[Resource], target: dict[str, str]) -> list[Resource]:
    only(target, {"group", "version", "kind", "name", "namespace"}, "patch target")
    found = []
    for resource in resources:
        group, _, version = resource["apiVersion"].rpartition("/")
        actual = {"group": group, "version": version, "kind": resource["kind"]}
        actual |= {"name": resource["metadata"]["name"]}
        actual |= {"namespace": resource["metadata"].get("namespace", "")}
        if all(actual[key] == value for key, value in target.items()):
            found.append(resource)
    if not found:
        raise LookupError(f"nothing matches {target}")
    return found


def _patch(directory: Path, entry: dict[str, Any], resources: list[Resource]) -> None:
    only(entry, {"path", "patch", "target"}, "patch")
    text = entry["patch"] if "patch" in entry else (directory / entry["path"]).read_text()
    body = yaml.safe_load(text)
    if isinstance(body, list):  # JSON 6902: a target is required
        for resource in _select(resources, entry["target"]):
            for operation in body:
                json6902(resource, operation)
        return
    target = entry.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
    for resource in _select(resources, target):
        merge(resource, body)


def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """Strategic merge, restricted to maps and scalars (no merge keys, no directives)."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise NotImplementedError(f"patch directive {key}")
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            raise NotImplementedError(f"strategic merge of the list {key}: use a JSON patch")
        else:
            into[key] = copy.deepcopy(value)


def json6902(resource: Resource, operation: dict[str, Any]) -> None:
    only(operation, {"op", "path", "value"}, "JSON patch operation")
    steps = [s.replace("~1", "/").replace("~0", "~") for s in operation["path"].split("/")[1:]]
    parent: Any = resource
    for step in steps[:-1]:
        parent = parent[int(step)] if isinstance(parent, list) else parent[step]
    last: Any = steps[-1]
    if isinstance(parent, list):
        last = len(parent) if last == "-" else int(last)
    op = operation["op"]
    exists = last < len(parent) if isinstance(parent, list) else last in parent
    if op in {"remove", "replace"} and not exists:
        raise KeyError(f"{operation['path']} does not exist")  # kustomize refuses it too
    if op == "remove":
        del parent[last]
    elif op == "replace":
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "add" and isinstance(parent, list):
        parent.insert(last, copy.deepcopy(operation["value"]))
    elif op == "add":
        parent[last] = copy.deepcopy(operation["value"])
    else:
        raise NotImplementedError(f"JSON patch operation {op}")


def _template_metadata(resource: Resource) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    if resource["kind"] in WORKLOAD_KINDS:
        return [spec["template"].setdefault("metadata", {})]
    if resource["kind"] == "CronJob":
        job = spec["jobTemplate"]
        return [job.setdefault("metadata", {}), job["spec"]["template"].setdefault("metadata", {})]
    return []


def _label(entry: dict[str, Any], resources: list[Resource]) -> None:
    only(entry, {"pairs", "includeTemplates", "includeSelectors"}, "labels")
    if entry.get("includeSelectors"):
        raise NotImplementedError("labels.includeSelectors: selectors are immutable, keep them")
    for resource in resources:
        metadatas = [resource["metadata"]]
        if entry.get("includeTemplates"):
            metadatas += _template_metadata(resource)
        for metadata in metadatas:
            metadata.setdefault("labels", {}).update(entry["pairs"])


def pod_specs(resource: Resource) -> list[dict[str, Any]]:
    if resource["kind"] in WORKLOAD_KINDS:
        return [resource["spec"]["template"]["spec"]]
    if resource["kind"] == "CronJob":
        return [resource["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def containers(resource: Resource) -> Iterator[dict[str, Any]]:
    for pod in pod_specs(resource):
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


def split_image(reference: str) -> tuple[str, str, str]:
    """(name, tag, digest); a registry's port is part of the name."""
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest
    return name, "", digest


def _set_image(image: dict[str, str], resources: list[Resource]) -> None:
    only(image, {"name", "newName", "newTag", "digest"}, "images")
    for container in (c for r in resources for c in containers(r)):
        name, tag, digest = split_image(container["image"])
        if name != image["name"]:
            continue
        new = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{new}@{image['digest']}"
        elif "newTag" in image:
            container["image"] = f"{new}:{image['newTag']}"
        else:
            container["image"] = new + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def name_hash(resource: Resource) -> str:
    """kustomize's suffix: SHA-256 of Go's JSON of kind, data (and a Secret's type) and name,
    where the name is always "" (kustomize looks up a field literally called
    "metadata/name"), then the first 10 hex digits with 0, 1, 3, a, e replaced."""
    document = {"kind": resource["kind"], "name": "", "data": resource.get("data", {})}
    if resource["kind"] == "Secret":
        document["type"] = resource["type"]
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escape)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


REFERENCES = (("configMapRef", "ConfigMap"), ("secretRef", "Secret"))
KEY_REFERENCES = (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret"))


def _references(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(kind, holder, key) of every ConfigMap/Secret name a pod spec refers to."""
    holders: list[tuple[dict[str, Any], tuple[tuple[str, str], ...]]] = []
    for container in pod.get("initContainers", []) + pod["containers"]:
        holders += [(source, REFERENCES) for source in container.get("envFrom", [])]
        holders += [(v.get("valueFrom", {}), KEY_REFERENCES) for v in container.get("env", [])]
    for holder, references in holders:
        for ref, kind in references:
            if ref in holder:
                yield kind, holder[ref], "name"
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"], "name"
        if "secret" in volume:
            yield "Secret", volume["secret"], "secretName"


def _add_name_hashes(built: Built) -> None:
    renamed = {}
    for resource in built.hashed:
        old = resource["metadata"]["name"]
        resource["metadata"]["name"] = f"{old}-{name_hash(resource)}"
        renamed[resource["kind"], old] = resource["metadata"]["name"]
    for pod in (pod for resource in built.resources for pod in pod_specs(resource)):
        for kind, holder, key in _references(pod):
            holder[key] = renamed.get((kind, holder[key]), holder[key])
