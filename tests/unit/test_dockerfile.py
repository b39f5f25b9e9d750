"""The Dockerfile checked for what the chart relies on: static checks (no image can be built here,
no container engine). hadolint: tests/integration/test_dockerfile.py."""

from __future__ import annotations

import re

from chart_tools import CHART, ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_multi_stage_cuda_python_base():
    steps = instructions()
    args = {
        value.split("=", 1)[0]: value.split("=", 1)[1]
        for kind, value in steps
        if kind == "ARG" and "=" in value
    }
    base = args["RAY_IMAGE"]
    assert re.fullmatch(r"rayproject/ray:2\.60\.\d+-py3(11|12)-cu12\d", base), base
    froms = [value for kind, value in steps if kind == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS build")
    assert any(kind == "COPY" and "--from=build" in value for kind, value in steps)


def test_installs_pinned_project_with_gpu_extra():
    steps = instructions()
    runs = " ".join(value for kind, value in steps if kind == "RUN")
    assert "[gpu]" in runs
    gpu_extra = re.search(r"^gpu = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert set(re.findall(r'"([A-Za-z0-9_.-]+)', gpu_extra)) == {
        "onnxruntime-gpu",
        "tensorrt-cu12",
    }
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"torch==([\d.]+)", makefile)[1]
    args = {
        value.split("=", 1)[0]: value.split("=", 1)[1]
        for kind, value in steps
        if kind == "ARG" and "=" in value
    }
    assert args["TORCH_VERSION"] == torch_pin


def test_runs_as_the_non_root_user_the_chart_expects():
    steps = instructions()
    users = [value for kind, value in steps if kind == "USER"]
    assert users and users[-1].split(":")[0] == "1000"
    helpers = "".join(p.read_text() for p in (CHART / "templates").glob("_*.tpl"))
    assert "runAsUser: 1000" in helpers and "runAsGroup: 100" in helpers
    assert steps[-1][0] in ("CMD", "ENTRYPOINT")


def test_dockerignore_keeps_the_context_small():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".tools", "data", "runs", "tests"} <= ignored
    copied = []
    for kind, value in instructions():
        if kind == "COPY" and "--from" not in value:
            copied += [t for t in value.split() if not t.startswith("--")][:-1]
    assert copied and all(c.rstrip("/") not in ignored for c in copied), copied
