"""The Dockerfile checked for what the chart relies on: static checks (no image can be built here,
no container engine). hadolint: tests/integration/test_dockerfile.py."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
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


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions, by its name (`FROM image AS name`)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for kind, value in instructions():
        if kind == "FROM":
            current = out.setdefault(value.split(" AS ")[-1].strip(), [])
        elif out:
            current.append((kind, value))
    return out


def args_of(steps) -> dict[str, str]:
    return {v.split("=", 1)[0]: v.split("=", 1)[1] for k, v in steps if k == "ARG" and "=" in v}


def test_installs_pinned_project_with_gpu_extra():
    by_stage = stages()
    assert list(by_stage)[-1] == "gpu" and "cpu" in by_stage  # gpu is the default target
    build = " ".join(v for k, v in by_stage["build"] if k == "RUN")
    assert "['optional-dependencies'][x]" in build and "for x in ('cpu', 'gpu')" in build
    gpu_extra = re.search(r"^gpu = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert set(re.findall(r'"([A-Za-z0-9_.-]+)', gpu_extra)) == {"onnxruntime-gpu", "tensorrt-cu12"}
    torch_pin = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())[1]
    for name in ("cpu", "gpu"):
        assert args_of(by_stage[name])["TORCH_VERSION"] == torch_pin
    gpu_runs = " ".join(v for k, v in by_stage["gpu"] if k == "RUN")
    assert "-r /tmp/requirements-gpu.txt" in gpu_runs
    assert (
        "import tensorrt" in gpu_runs
        and "'CUDAExecutionProvider' in ort.get_available_providers()" in gpu_runs
    )


def test_each_image_holds_one_onnx_runtime_build_and_pip_check_passes_there():
    """onnxruntime and onnxruntime-gpu are one module in two distributions: neither is a base
    dependency (a GPU image swapping one for the other failed `pip check`); each target installs
    its extra's build and runs `pip check` after vft's wheel."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    base = re.search(r"^dependencies = \[\n(.*?)^\]", pyproject, re.M | re.S)[1]
    assert not re.search(r'^\s*"onnxruntime', base, re.M)
    for extra, builds in (("cpu", ["onnxruntime"]), ("gpu", ["onnxruntime-gpu"])):
        listed = re.search(rf"^{extra} = \[(.*)\]$", pyproject, re.M)[1]
        assert [n for n in re.findall(r'"([A-Za-z0-9_.-]+)', listed) if n.startswith("onnxruntime")] == builds
    by_stage = stages()
    for name in ("cpu", "gpu"):
        runs = [v for k, v in by_stage[name] if k == "RUN"]
        assert any(f"-r /tmp/requirements-{name}.txt" in v for v in runs), name
        wheel_at = next(i for i, v in enumerate(runs) if ".whl" in v)
        assert "pip check" in runs[wheel_at], name
        assert not any("uninstall" in v for v in runs), name


def test_without_onnx_runtime_the_error_says_which_extra_to_install():
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "for module in ('serving.runtime.onnx_backends', 'serving.export.to_int8'):\n"
        "    try:\n"
        "        __import__(module)\n"
        "    except ImportError as exc:\n"
        "        print(module, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = out.stdout.splitlines()
    hint = "pip install 'vft[cpu]'"
    assert len(lines) == 2 and all(hint in line for line in lines), out.stdout + out.stderr


def test_torch_comes_from_the_index_of_the_base_images_cuda():
    by_stage = stages()
    cuda = re.search(r"-(cu\d+)$", args_of(instructions())["RAY_IMAGE"])[1]
    assert args_of(by_stage["gpu"])["TORCH_INDEX"] == f"https://download.pytorch.org/whl/{cuda}"
    assert args_of(by_stage["cpu"])["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert not re.search(r"-cu\d+$", args_of(instructions())["RAY_CPU_IMAGE"])


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_a_code_change_rebuilds_only_the_last_layers(stage):
    """torch, then the dependencies, then the project's wheel without its dependencies: the
    wheel (which changes with every commit) is copied after every large install."""
    steps = stages()[stage]
    kinds = [(k, v) for k, v in steps if k in ("RUN", "COPY")]
    torch_at = next(i for i, (k, v) in enumerate(kinds) if k == "RUN" and "torch==" in v)
    deps_at = next(i for i, (k, v) in enumerate(kinds) if k == "RUN" and "-r /tmp/requirements.txt" in v)
    wheel_at = next(i for i, (k, v) in enumerate(kinds) if k == "COPY" and ".whl" in v)
    assert torch_at < deps_at < wheel_at
    after = " ".join(v for k, v in kinds[wheel_at:] if k == "RUN")
    assert "--no-deps" in after and "vft --help" in after
    assert not any(k == "RUN" and "torch==" in v for k, v in kinds[wheel_at:])


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
