"""Foundation backbones at the user's input size: models whose architecture depends on it (ViT,
DINOv2, Swin) are built for `data.img_size`, pretrained position embeddings are resampled on
load, and a size a model cannot take is a config error before any cluster starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from trainer.components.models import create_model, input_size_error, nearest_input_sizes
from trainer.config import build_config
from trainer.errors import ConfigError
from trainer.tasks.base import get_task

ROOT = Path(__file__).resolve().parents[4]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "name, size", [("vit_small_patch14_dinov2", 56), ("swin_tiny_patch4_window7_224", 64)]
)
def test_size_dependent_backbones_are_built_for_the_size_and_train_a_step(name, size):
    default = timm.create_model(name, pretrained=False).pretrained_cfg["input_size"][-1]
    assert default != size
    torch.manual_seed(0)
    built = create_model(name, num_classes=3, img_size=size)
    assert built.data_defaults["input_size"] == (3, size, size)
    model = built.module.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert torch.isfinite(model(images)).all()


def test_a_size_the_model_cannot_take_names_the_field_the_constraint_and_nearest_sizes(tmp_path):
    (tmp_path / "a").mkdir()
    raw = {"data": {"train": str(tmp_path), "img_size": 100}, "model": {"name": "maxvit_tiny_tf_224"}}
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    message = str(err.value)
    assert message.startswith("data.img_size: maxvit_tiny_tf_224 cannot take 100x100 inputs")
    assert "divisible by window" in message and "nearest sizes it takes: 96, 128" in message
    assert build_config({**raw, "data": {**raw["data"], "img_size": 96}}).data.img_size == 96


def test_torchvision_vit_is_fixed_at_its_pretrained_size():
    assert "Expected 224" in input_size_error("vit_b_16", "torchvision", 64)
    assert input_size_error("vit_b_16", "torchvision", 224) is None
    assert nearest_input_sizes("resnet18", "timm", 224) == [217, 231]  # any size works for a CNN


def test_the_checkpoint_is_rebuilt_at_its_trained_size(tmp_path):
    (tmp_path / "a").mkdir()
    cfg = build_config(
        {"data": {"train": str(tmp_path), "img_size": 56}, "model": {"name": "vit_small_patch14_dinov2"}}
    )
    task = get_task(cfg.task)
    built = task.build_model(cfg, 3)
    meta = task.training_meta(cfg, ["a", "b", "c"])
    assert meta["model"]["img_size"] == 56
    rebuilt = task.rebuild_model({**meta, "model": {"name": built.name, "source": "timm", **meta["model"]}})
    own = built.module.state_dict()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in own.items()}


HUB_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed
    from trainer.components.models import create_model

    built = create_model(sys.argv[1], num_classes=3, weights="hub", img_size=int(sys.argv[3]))
    saved = load_file(sys.argv[2])
    grid = int(sys.argv[3]) // 14
    want = resample_abs_pos_embed(saved["pos_embed"], new_size=(grid, grid), num_prefix_tokens=1)
    own = built.module.state_dict()
    assert own["pos_embed"].shape == want.shape, (own["pos_embed"].shape, want.shape)
    assert torch.allclose(own["pos_embed"], want, atol=1e-6), "position embeddings not resampled"
    assert torch.equal(own["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])
    print("LOADED", tuple(own["pos_embed"].shape))
    """
)


def test_pretrained_dinov2_loads_offline_at_another_size_with_resampled_position_embeddings(tmp_path):
    name = "vit_small_patch14_dinov2"
    torch.manual_seed(7)
    model = timm.create_model(name, pretrained=False)  # 518 px: a 37x37 grid of patches
    repo = model.pretrained_cfg["hf_hub_id"]
    assert repo.startswith("timm/") and model.pos_embed.shape[1] == 37 * 37 + 1
    cache = tmp_path / "hf" / "hub"
    entry = cache / ("models--" + repo.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(COMMIT)
    snapshot = entry / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    weights = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(cache.parent), HF_HUB_CACHE=str(cache), PYTHONPATH=str(ROOT))
    script = tmp_path / "load.py"
    script.write_text(HUB_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), name, str(weights), "56"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED (1, 17, 384)" in result.stdout
    assert resample_abs_pos_embed  # the reference the script compares against


@pytest.mark.parametrize(
    ("name", "trained", "size"),
    [("vit_tiny_patch16_224", 32, 48), ("swin_tiny_patch4_window7_224", 224, 160)],
)
def test_file_weights_from_another_size_are_resampled_on_load(tmp_path, name, trained, size):
    """model.weights=<file> of a model trained at another size: timm's checkpoint filter for
    the family resamples position embeddings (ViT) and relative-position tables (Swin) instead
    of failing on their shapes; every other tensor loads as saved."""
    torch.manual_seed(0)
    source = create_model(name, 5, img_size=trained).module
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model(name, 3, weights=str(path), img_size=size).module.eval()
    assert model(torch.randn(1, 3, size, size)).shape == (1, 3)
    own, saved = model.state_dict(), source.state_dict()
    if name.startswith("vit"):
        grid = size // 16
        expected = resample_abs_pos_embed(saved["pos_embed"], (grid, grid), num_prefix_tokens=1)
        torch.testing.assert_close(own["pos_embed"], expected)
    else:
        table = "layers.3.blocks.0.attn.relative_position_bias_table"  # window 7 -> 5 at 160 px
        assert own[table].shape == (81, 24) and saved[table].shape == (169, 24)  # resampled
    same = [k for k in saved if k in own and own[k].shape == saved[k].shape and not k.startswith("head")]
    assert all(torch.equal(own[k], saved[k]) for k in same if saved[k].is_floating_point())
