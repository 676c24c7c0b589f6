"""Feature levels of timm backbones: specs, hooks and token/NHWC reshaping."""

import pytest
import timm
import torch

from sassl_core.method.features import LevelHooks, LevelSpec, extract_levels, feature_levels, to_map

TINY_VIT = dict(img_size=64, depth=6, embed_dim=32, num_heads=2)
TINY_SWIN = dict(img_size=64, window_size=2, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))

MODELS = {
    "resnet18": ("resnet18", {}),
    "efficientnet_b0": ("efficientnet_b0", {}),
    "vit": ("vit_tiny_patch16_224", TINY_VIT),
    "swin": ("swin_tiny_patch4_window7_224", TINY_SWIN),
}


def make(key):
    name, kwargs = MODELS[key]
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()


@pytest.mark.parametrize("key", list(MODELS))
def test_level_maps_have_spec_channels_and_stride(key):
    model = make(key)
    levels = feature_levels(model)
    maps = extract_levels(model, torch.randn(2, 3, 64, 64), levels)
    assert len(maps) == len(levels)
    for fmap, spec in zip(maps, levels):
        assert fmap.shape == (2, spec.channels, 64 // spec.reduction, 64 // spec.reduction)


def test_resnet_levels_are_its_stages():
    levels = feature_levels(make("resnet18"))
    assert [s.module_name for s in levels] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [s.channels for s in levels] == [64, 64, 128, 256, 512]


def test_plain_vit_keeps_four_evenly_spaced_blocks_ending_last():
    levels = feature_levels(make("vit"))  # 6 blocks at one stride
    assert [s.module_name for s in levels] == ["blocks.1", "blocks.2", "blocks.4", "blocks.5"]
    twelve = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, depth=12, embed_dim=32, num_heads=2)
    assert [s.module_name for s in feature_levels(twelve)] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]


def test_vit_tokens_drop_class_token_and_keep_patch_order():
    model = make("vit")
    x = torch.randn(1, 3, 64, 64)
    spec = feature_levels(model)[-1]
    with LevelHooks(model, [spec]) as hooks:
        model.forward_features(x)
    tokens = hooks.outputs[0]
    fmap = to_map(tokens, spec, (64, 64), num_prefix_tokens=model.num_prefix_tokens)
    # patch (row 1, col 2) of a 4x4 grid is token 1 + 1*4 + 2
    assert torch.equal(fmap[0, :, 1, 2], tokens[0, 1 + 6])


def test_swin_nhwc_is_permuted():
    out = torch.arange(2 * 4 * 4 * 8, dtype=torch.float32).reshape(2, 4, 4, 8)
    fmap = to_map(out, LevelSpec("layers.0", 8, 4), (16, 16), layout="NHWC")
    assert fmap.shape == (2, 8, 4, 4)
    assert torch.equal(fmap[1, 5, 2, 3], out[1, 2, 3, 5])


def test_hook_replacement_feeds_next_stage():
    model = make("resnet18")
    levels = feature_levels(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = extract_levels(model, x, levels)
        with LevelHooks(model, levels, lambda i, out: torch.zeros_like(out) if i == 3 else None) as hooks:
            model.forward_features(x)
    assert torch.count_nonzero(hooks.outputs[3]) == 0
    assert torch.allclose(hooks.outputs[2], plain[2])
    assert not torch.allclose(hooks.outputs[4], plain[4])


def test_model_without_feature_info_is_rejected():
    with pytest.raises(TypeError, match="feature_info"):
        feature_levels(torch.nn.Conv2d(3, 3, 1))
