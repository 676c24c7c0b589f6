"""Dual encoder (paper §3.3, Eq. 7-9): frozen E_g, residual hooks on E_s, fusion, loading."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from sassl_core.errors import UserError
from sassl_core.method.transfer import DualEncoder, build_dual_encoder, fuse
from sassl_core.train.checkpoint import load_encoder_state

TINY_VIT = dict(img_size=64, depth=4, embed_dim=32, num_heads=2)
TINY_SWIN = dict(img_size=64, window_size=2, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def resnet():
    return timm.create_model("resnet18", num_classes=0)


@pytest.fixture(scope="module")
def pretrained_state():
    torch.manual_seed(0)
    return resnet().state_dict()


def test_fusion_formula():
    g, s = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.allclose(fuse(g, s), g * s + 1 / (1 + torch.exp(-s)))


def test_residual_is_added_at_every_level(pretrained_state):
    """Hooked forward == manual stage-by-stage Eq. 7-9 on resnet18."""
    torch.manual_seed(1)
    enc = build_dual_encoder(resnet, pretrained_state)
    with torch.no_grad():  # make E_s differ from E_g so the residual matters
        for p in enc.special.parameters():
            p.add_(0.01 * torch.randn_like(p))
    enc.eval()
    x = torch.randn(2, 3, 64, 64)
    g, s = enc.generic, enc.special
    stages_g = [lambda t: g.act1(g.bn1(g.conv1(t))), lambda t: g.layer1(g.maxpool(t)), g.layer2, g.layer3, g.layer4]
    stages_s = [lambda t: s.act1(s.bn1(s.conv1(t))), lambda t: s.layer1(s.maxpool(t)), s.layer2, s.layer3, s.layer4]
    with torch.no_grad():
        fg, fs, expected = x, x, []
        for stage_g, stage_s in zip(stages_g, stages_s):
            fg = stage_g(fg)
            fs = stage_s(fs) + fg
            expected.append(fg * fs + torch.sigmoid(fs))
        got = enc(x)
    assert len(got) == 5
    for e, o in zip(expected, got):
        assert torch.allclose(e, o, atol=1e-5)
    # and the special branch without the residual would give something else
    with torch.no_grad():
        alone = DualEncoder(None, s, residual=False)(x)
    assert not torch.allclose(alone[-1], fs, atol=1e-3)


def test_generic_gets_no_gradient_and_stays_bit_identical(pretrained_state):
    torch.manual_seed(2)
    enc = build_dual_encoder(resnet, pretrained_state)
    before = {k: v.clone() for k, v in enc.generic.state_dict().items()}  # includes BN statistics
    special_before = enc.special.layer4[0].conv1.weight.clone()
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.1)
    enc.train()
    assert not enc.generic.training and enc.special.training
    for _ in range(3):
        loss = sum(level.mean() for level in enc(torch.randn(4, 3, 32, 32)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in enc.generic.parameters())
    after = enc.generic.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(special_before, enc.special.layer4[0].conv1.weight)


def test_special_starts_from_pretrained_or_scratch(pretrained_state):
    key = "layer1.0.conv1.weight"
    pre = build_dual_encoder(resnet, pretrained_state)
    assert torch.equal(pre.special.state_dict()[key], pretrained_state[key])
    assert torch.equal(pre.generic.state_dict()[key], pretrained_state[key])
    scratch = build_dual_encoder(resnet, pretrained_state, special_init="scratch")
    assert not torch.equal(scratch.special.state_dict()[key], pretrained_state[key])


def test_without_residual_learning_is_special_alone(pretrained_state):
    enc = build_dual_encoder(resnet, pretrained_state, residual=False)
    assert enc.generic is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        levels = enc.eval()(x)
        reference = resnet()
        reference.load_state_dict(pretrained_state)
        deepest = reference.eval().forward_features(x)
    assert torch.allclose(levels[-1], deepest, atol=1e-6)
    assert enc.feature_channels == [64, 64, 128, 256, 512] and enc.reductions == [2, 4, 8, 16, 32]


def test_freeze_special_stages(pretrained_state):
    enc = build_dual_encoder(resnet, pretrained_state, freeze_special_stages=2)
    s = enc.special
    assert not s.conv1.weight.requires_grad and not s.layer1[0].conv1.weight.requires_grad
    assert s.layer2[0].conv1.weight.requires_grad
    enc.train()
    assert not s.bn1.training and s.layer2.training


@pytest.mark.parametrize(
    "name,kwargs,channels",
    [("vit_tiny_patch16_224", TINY_VIT, [32] * 4), ("swin_tiny_patch4_window7_224", TINY_SWIN, [16, 32, 64, 128])],
)
def test_transformers_forward_backward(name, kwargs, channels):
    make = lambda: timm.create_model(name, num_classes=0, **kwargs)
    torch.manual_seed(3)
    enc = build_dual_encoder(make, make().state_dict())
    assert enc.feature_channels == channels
    levels = enc(torch.randn(2, 3, 64, 64))
    for fmap, c, r in zip(levels, enc.feature_channels, enc.reductions):
        assert fmap.shape == (2, c, 64 // r, 64 // r)
    levels[-1].mean().backward()
    assert enc.special.patch_embed.proj.weight.grad is not None
    assert all(p.grad is None for p in enc.generic.parameters())


def test_load_encoder_state_formats(tmp_path, pretrained_state):
    st = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in pretrained_state.items()}, str(st))
    assert torch.equal(load_encoder_state(st, resnet())["conv1.weight"], pretrained_state["conv1.weight"])
    ckpt = tmp_path / "last.pt"
    torch.save({"encoder": {"module." + k: v for k, v in pretrained_state.items()}, "step": 3}, ckpt)
    assert set(load_encoder_state(ckpt, resnet())) == set(pretrained_state)


def test_mismatched_weights_name_file_and_backbone(tmp_path, pretrained_state):
    st = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in pretrained_state.items()}, str(st))
    other = timm.create_model("resnet34", num_classes=0)
    with pytest.raises(UserError, match=r"encoder.safetensors: expected encoder weights of backbone 'resnet34'"):
        load_encoder_state(st, other)
    bad = dict(pretrained_state, **{"conv1.weight": torch.zeros(8, 3, 7, 7)})
    with pytest.raises(UserError, match=r"shape mismatches \(e.g. conv1.weight"):
        build_dual_encoder(resnet, bad, source="x.pt")
    with pytest.raises(UserError, match="not found"):
        load_encoder_state(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="corrupt.safetensors: not a readable safetensors file"):
        load_encoder_state(corrupt)
