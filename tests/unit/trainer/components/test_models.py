"""Models by name (timm first, torchvision on request), head replacement, weight loading from
files, run directories and the Hugging Face cache offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from trainer.components.models import (
    create_model,
    list_models,
    load_weights,
    model_sources,
    read_weights,
    resolve_source,
)
from trainer.errors import WeightsError

ROOT = Path(__file__).resolve().parents[4]


def timm_state(name: str = "resnet18", num_classes: int = 1000, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=num_classes).state_dict()


def contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in state.items()}


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "source", "cls", "head"),
    [
        ("resnet18", "auto", timm.models.ResNet, "fc"),
        ("test_vit", "timm", timm.models.VisionTransformer, "head"),
        ("resnet18", "torchvision", torchvision.models.ResNet, "fc"),
        ("mobilenet_v3_small", "auto", torchvision.models.MobileNetV3, "classifier.3"),
    ],
)
def test_create_model_replaces_the_head(name, source, cls, head):
    built = create_model(name, num_classes=7, source=source)
    assert isinstance(built.module, cls)
    assert built.head == (head,)
    assert built.module.get_submodule(head).weight.shape[0] == 7
    built.module.eval()
    size = 160 if name == "test_vit" else 32
    with torch.no_grad():
        out = built.module(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert {"mean", "std", "input_size"} <= set(built.data_defaults)


def test_resolve_source_prefers_timm_and_respects_the_choice():
    assert resolve_source("resnet18") == "timm"
    assert resolve_source("resnet18", "torchvision") == "torchvision"
    assert resolve_source("resnet18", "timm") == "timm"
    assert resolve_source("mobilenet_v3_small") == "torchvision"  # torchvision's name only
    assert resolve_source("mobilenet_v3_small", "timm") is None
    assert resolve_source("test_vit", "torchvision") is None
    assert resolve_source("no_such_model") is None
    assert model_sources("resnet18") == ["timm", "torchvision"]
    assert create_model("resnet18", 3, source="torchvision").source == "torchvision"
    assert create_model("resnet18", 3).source == "timm"


def test_list_models_filters_by_pattern_and_source():
    both = list_models("resnet1*")
    assert "resnet18" in both and "resnet101" in both
    assert all(n.startswith("resnet1") for n in both)
    assert "mobilenet_v3_small" in list_models("mobilenet_v3*", source="torchvision")
    assert "mobilenet_v3_small" not in list_models("mobilenet_v3*", source="timm")


def test_unknown_model_is_a_value_error():
    with pytest.raises(ValueError, match="no_such_model"):
        create_model("no_such_model", 3)
    with pytest.raises(ValueError, match="test_vit"):
        create_model("test_vit", 3, source="torchvision")


# ----------------------------------------------------------------------------- load_weights


def test_load_weights_drops_a_head_of_another_shape():
    built = create_model("resnet18", 5)
    head_before = built.module.fc.weight.detach().clone()
    state = timm_state(num_classes=1000)
    dropped = load_weights(built.module, state, built.head)
    assert sorted(dropped) == ["fc.bias", "fc.weight"]
    own = built.module.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key
    assert torch.equal(built.module.fc.weight, head_before)  # new head kept


def test_load_weights_of_the_same_shape_loads_the_head_too():
    built = create_model("resnet18", 5)
    state = timm_state(num_classes=5)
    assert load_weights(built.module, state, built.head) == []
    assert torch.equal(built.module.fc.weight, state["fc.weight"])


def test_mismatched_backbone_tensor_is_an_error_naming_the_key():
    built = create_model("resnet18", 5)
    state = timm_state()
    state["layer2.0.conv1.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(WeightsError, match=r"layer2\.0\.conv1\.weight"):
        load_weights(built.module, state, built.head)


def test_unexpected_and_missing_tensors_are_errors():
    built = create_model("resnet18", 5)
    extra = dict(timm_state(), **{"extra.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match=r"unexpected tensor 'extra\.weight'"):
        load_weights(built.module, extra, built.head)
    missing = timm_state()
    del missing["layer4.1.bn2.running_var"]
    with pytest.raises(WeightsError, match=r"layer4\.1\.bn2\.running_var"):
        load_weights(built.module, missing, built.head)


def test_failed_load_leaves_the_model_untouched():
    built = create_model("resnet18", 5)
    before = built.module.conv1.weight.detach().clone()
    state = timm_state()
    state["unexpected"] = torch.zeros(1)
    with pytest.raises(WeightsError):
        load_weights(built.module, state, built.head)
    assert torch.equal(built.module.conv1.weight, before)


# ----------------------------------------------------------------------------- read_weights


def test_read_weights_safetensors(tmp_path):
    state = timm_state("test_resnet")
    path = tmp_path / "w.safetensors"
    save_file(contiguous(state), str(path))
    read = read_weights(path)
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], state[k]) for k in state)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 3},
        lambda s: {"model": {f"_orig_mod.module.{k}": v for k, v in s.items()}},
    ],
    ids=["plain", "state_dict-module", "model-compiled"],
)
def test_read_weights_pth_unwraps(tmp_path, wrap):
    state = timm_state("test_resnet")
    path = tmp_path / "w.pth"
    torch.save(wrap(state), path)
    read = read_weights(path)
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], state[k]) for k in state)


def test_read_weights_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "obj": Path("x")}, path)
    with pytest.raises(WeightsError, match="evil.pth"):
        read_weights(path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="garbage.safetensors"):
        read_weights(garbage)
    with pytest.raises(WeightsError, match="not found"):
        read_weights(tmp_path / "nope.pth")


def make_run_dir(root: Path, model_name: str, state: dict[str, torch.Tensor]) -> Path:
    best = root / "best"
    best.mkdir(parents=True)
    save_file(contiguous(state), str(best / "model.safetensors"))
    (best / "meta.json").write_text(json.dumps({"model": {"name": model_name, "source": "timm"}}))
    return root


def test_read_weights_from_a_run_directory(tmp_path):
    state = timm_state("test_resnet", num_classes=4)
    run = make_run_dir(tmp_path / "run", "test_resnet", state)
    read = read_weights(run, expect_model="test_resnet")
    assert torch.equal(read["fc.weight"], state["fc.weight"])
    built = create_model("test_resnet", 4, weights=str(run))
    assert torch.equal(built.module.fc.weight, state["fc.weight"])
    built = create_model("test_resnet", 2, weights=str(run))  # other classes: the head is new
    assert built.module.fc.weight.shape[0] == 2
    assert torch.equal(built.module.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_run_directory_of_another_model_is_refused(tmp_path):
    run = make_run_dir(tmp_path / "run", "resnet50", timm_state("test_resnet"))
    with pytest.raises(WeightsError, match="resnet50"):
        read_weights(run, expect_model="test_resnet")
    with pytest.raises(WeightsError, match="resnet50"):
        create_model("test_resnet", 3, weights=str(run))
    with pytest.raises(WeightsError, match="no model.safetensors"):
        read_weights(tmp_path)


# ----------------------------------------------------------------------------- hub, offline

HUB_NAME = "test_resnet"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

HUB_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import load_file
    from trainer.components.models import create_model

    built = create_model(sys.argv[1], num_classes=3, weights="hub")
    expected = load_file(sys.argv[2])
    own = built.module.state_dict()
    backbone = [k for k in expected if not k.startswith("fc.")]
    assert backbone and all(torch.equal(own[k], expected[k]) for k in backbone), "backbone differs"
    assert own["fc.weight"].shape == (3, expected["fc.weight"].shape[1]), own["fc.weight"].shape
    print("LOADED", len(backbone))
    """
)


def run_offline(cache: Path, weights_file: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("HF_", "HUGGINGFACE_")):
            del env[key]
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(cache.parent),
        HF_HUB_CACHE=str(cache),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(ROOT),
    )
    script = tmp_path / "hub_load.py"
    script.write_text(HUB_SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), HUB_NAME, str(weights_file)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hub_weights_load_offline_from_the_cache(tmp_path):
    torch.manual_seed(1234)
    model = timm.create_model(HUB_NAME, pretrained=False)
    repo = model.pretrained_cfg["hf_hub_id"]  # e.g. timm/test_resnet.r160_in1k
    assert repo.startswith("timm/")
    cache = tmp_path / "hf" / "hub"
    entry = cache / ("models--" + repo.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(COMMIT)
    snapshot = entry / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    weights = snapshot / "model.safetensors"  # what timm asks the hub for first
    save_file(contiguous(model.state_dict()), str(weights))

    result = run_offline(cache, weights, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED" in result.stdout


def test_hub_weights_fail_cleanly_offline_with_an_empty_cache(tmp_path):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    result = run_offline(cache, tmp_path / "unused.safetensors", tmp_path)
    assert result.returncode != 0
    assert "LOADED" not in result.stdout
    assert "Error" in result.stderr  # an exception, raised quickly (no hang, no network)
