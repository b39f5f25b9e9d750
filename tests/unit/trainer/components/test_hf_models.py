"""`transformers` models (source hf), offline: tiny random models written with save_pretrained
by the test, and one put in the session's hub cache under a Hub id. Head replacement, the image
processor as preprocessing, block discovery for freezing and layer decay, rebuilding from
meta.json alone, weights from a run and from a transformers checkpoint, SegFormer at the input
size, and clear errors for what is not a model."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from hf_tools import hub_snapshot, tiny_segformer, tiny_vit
from safetensors.torch import save_file

from serving.export.to_onnx import export_onnx
from trainer.components import hf_models
from trainer.components.finetune import param_groups, param_layout
from trainer.components.lora import LoraSettings, apply_lora
from trainer.components.models import create_model, load_weights, resolve_source
from trainer.config import build_config
from trainer.errors import WeightsError
from trainer.tasks.base import get_task
from trainer.tasks.segmentation.model import create_segmenter


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    torch.manual_seed(0)
    return tiny_vit(tmp_path_factory.mktemp("vit"), size=32, num_labels=7)


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    torch.manual_seed(0)
    return tiny_segformer(tmp_path_factory.mktemp("segformer"), size=64, num_labels=5)


def test_a_classifier_gets_a_new_head_and_keeps_the_pretrained_body(vit_dir):
    built = create_model(str(vit_dir), num_classes=3, source="hf", weights="hub")
    assert (built.source, built.head) == ("hf", ("model.classifier",))
    assert built.module(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    from transformers import ViTForImageClassification

    saved = ViTForImageClassification.from_pretrained(vit_dir).state_dict()
    own = built.module.state_dict()
    body = [k for k in saved if not k.startswith("classifier.")]
    assert body and all(torch.equal(own[f"model.{k}"], saved[k]) for k in body)
    assert own["model.classifier.weight"].shape == (3, 32)


def test_the_image_processor_is_the_preprocessing(vit_dir):
    defaults = create_model(str(vit_dir), 3, "hf").data_defaults
    assert defaults["input_size"] == (3, 32, 32) and defaults["crop_pct"] == 1.0
    assert defaults["mean"] == (0.5, 0.5, 0.5) and defaults["std"] == (0.5, 0.5, 0.5)
    assert defaults["interpolation"] == "bilinear"


def test_a_cropping_processor_gives_crop_pct_and_bicubic(tmp_path):
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    ConvNextForImageClassification(
        ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    ).save_pretrained(tmp_path)
    ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.8, resample=3).save_pretrained(tmp_path)
    defaults = create_model(str(tmp_path), 2, "hf").data_defaults
    assert (defaults["input_size"], defaults["crop_pct"]) == ((3, 64, 64), 0.8)  # resize to 80, crop 64
    assert defaults["interpolation"] == "bicubic"
    assert defaults["mean"] == pytest.approx(ConvNextImageProcessor.from_pretrained(tmp_path).image_mean)


def test_blocks_are_the_encoder_layers_for_freezing_and_layer_decay(vit_dir):
    built = create_model(str(vit_dir), 3, "hf")
    layout = param_layout(built)
    firsts = [block[0] for block in layout.blocks]
    assert firsts[0].startswith("model.vit.embeddings")
    assert [f.split(".")[3] for f in firsts[1:3]] == ["0", "1"]  # model.vit.layers.<i>
    assert firsts[-1].startswith("model.vit.layernorm")
    groups = param_groups(built.module, layout, "full", [], 1.0, 0.05, 0.5, 1.0)
    lr = {name: group["lr"] for group in groups for name in group["names"]}
    assert lr["model.classifier.weight"] == 1.0
    assert lr[firsts[2]] == pytest.approx(0.25) and lr[firsts[0]] == pytest.approx(0.0625)


VIT_LIKE = {"patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
FAMILIES = {  # tiny configs: (config class, kwargs, layers or stages)
    "DeiT": ("DeiTConfig", {**VIT_LIKE, "intermediate_size": 64}, 2),
    "Beit": ("BeitConfig", {**VIT_LIKE, "intermediate_size": 64}, 2),
    "Dinov2": ("Dinov2Config", VIT_LIKE, 2),
    "Swin": (
        "SwinConfig",
        {"patch_size": 4, "window_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2]},
        2,
    ),
    "ConvNext": ("ConvNextConfig", {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}, 4),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_supported_family_splits_into_stem_layers_and_tail(family, tmp_path):
    import transformers

    config_name, kwargs, layers = FAMILIES[family]
    config = getattr(transformers, config_name)(image_size=32, **kwargs)
    getattr(transformers, f"{family}ForImageClassification")(config).save_pretrained(tmp_path)
    built = create_model(str(tmp_path), 3, "hf", weights="hub")
    assert built.module(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    blocks = param_layout(built).blocks
    assert len(blocks) == layers + 2, [b[0] for b in blocks]  # stem, each layer or stage, tail
    assert "embeddings" in blocks[0][0]


def test_lora_adapts_the_attention_projections(vit_dir):
    built = apply_lora(create_model(str(vit_dir), 3, "hf"), LoraSettings(rank=4))
    adapted = {n.split(".lora_")[0] for n, _ in built.module.named_parameters() if ".lora_" in n}
    assert adapted == {f"model.vit.layers.{i}.attention.{p}_proj" for i in (0, 1) for p in "qkvo"}
    trainable = {n for n, p in built.module.named_parameters() if n not in built.frozen}
    assert {"model.classifier.weight"} <= trainable and "model.vit.layers.0.mlp.fc1.weight" not in trainable


def test_a_checkpoint_is_rebuilt_from_meta_alone(vit_dir):
    built = create_model(str(vit_dir), 3, "hf", weights="hub")
    meta = {
        "task": "classification",
        "classes": ["a", "b", "c"],
        "num_classes": 3,
        "multilabel": False,
        "model": {"name": "/nowhere", "source": "hf", **built.extra},
    }
    rebuilt = get_task("classification").rebuild_model(meta)
    load_weights(rebuilt, built.module.state_dict(), head=())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(rebuilt.eval()(x), built.module.eval()(x))
    assert rebuilt.model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_weights_from_a_transformers_checkpoint_file(vit_dir, tmp_path):
    from transformers import ViTForImageClassification

    source = ViTForImageClassification.from_pretrained(vit_dir)
    file = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(file))
    built = create_model(str(vit_dir), 3, "hf", weights=str(file))
    key = "vit.layers.1.attention.q_proj.weight"
    assert torch.equal(built.module.state_dict()[f"model.{key}"], source.state_dict()[key])


def test_another_input_size_interpolates_the_position_embeddings(vit_dir):
    built = create_model(str(vit_dir), 3, "hf")
    assert built.module(torch.randn(1, 3, 48, 48)).shape == (1, 3)


def test_a_hub_id_loads_offline_from_the_cache(vit_dir):
    hub_snapshot("vft-tests/tiny-vit", vit_dir)
    assert resolve_source("vft-tests/tiny-vit") == "hf"
    built = create_model("vft-tests/tiny-vit", 4, "hf", weights="hub")
    assert built.module(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_what_is_not_a_model_is_a_clear_error(tmp_path, vit_dir):
    base = {"task": "classification", "data": {"train": str(tmp_path)}}
    for name, reason in (
        ("vft-tests/not-in-the-cache", "cannot read the Hugging Face config"),
        (str(tmp_path), "neither a Hub id"),
    ):
        with pytest.raises(Exception, match=reason) as info:
            build_config({**base, "model": {"source": "hf", "name": name}})
        assert "model.name" in str(info.value)
    with pytest.raises(Exception, match="has no segmentation model in transformers"):
        build_config(
            {
                "task": "segmentation",
                "data": {"train": str(tmp_path)},
                "model": {"source": "hf", "name": str(vit_dir)},
            }
        )
    with pytest.raises(ValueError, match="model.drop_path_rate: vit models have no such option"):
        create_model(str(vit_dir), 3, "hf", drop_path_rate=0.1)
    with pytest.raises(WeightsError, match="cannot read the Hugging Face config"):
        create_model("vft-tests/missing", 3, "hf")


def test_segformer_predicts_at_the_input_size_and_exports_to_onnx(segformer_dir, tmp_path):
    built = create_segmenter(str(segformer_dir), 3, weights="hub", source="hf")
    assert built.head == ("model.decode_head.classifier",)
    assert built.data_defaults["input_size"] == (3, 64, 64)
    model = built.module.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (1, 3, 64, 64)
    meta = {"classes": ["bg", "a", "b"], "num_classes": 3, "model": {"source": "hf", **built.extra}}
    meta.update(segmentation={"aux_loss": False}, preprocessing={"input_size": 64})
    task = get_task("segmentation")
    rebuilt = task.rebuild_model(meta)
    load_weights(rebuilt, model.state_dict(), head=())
    graph = task.onnx_graph(rebuilt, meta)  # what `vft export` exports
    export_onnx(graph, tmp_path / "seg.onnx", opset=18)
    session = ort.InferenceSession(str(tmp_path / "seg.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {graph.inputs[0]: x.numpy()})
    assert abs(onnx_out - expected.numpy()).max() < 1e-4


def test_ls_lists_the_transformers_types_that_work():
    assert {"vit", "dinov2", "swin", "convnext"} <= set(hf_models.supported_types("classification"))
    assert "segformer" in hf_models.supported_types("segmentation")
