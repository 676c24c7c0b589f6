"""The paper's backbones (Tables 2-7), built by timm.

Every name below is a timm model name; ``sassl_core.backbone.create_backbone`` also accepts
``timm:<any timm name>`` for models not listed here. ProxylessNAS is not in timm; its nearest
relative there is ``spnasnet_100`` (Single-Path NAS: the same MobileNetV2 inverted-residual
search space and hardware-aware one-shot search), registered as ``proxylessnas``.

Input size is not fixed: CNNs pool globally and take any size their strides allow (NASNet's
stem needs about 96 px or more); ViT and Swin fix their patch grid at construction, so they
are built for the run's ``data.image_size`` (timm resamples position embeddings and Swin's
windows to it, also for pretrained weights). A size a backbone cannot take is refused up front
with an error naming ``data.image_size``.
"""

from __future__ import annotations

import sassl_core
from sassl_core.backbone import TimmOptions, build_timm

PAPER_BACKBONES = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_b1": "efficientnet_b1",
    "repvgg_a0": "repvgg_a0",
    "repvgg_b0": "repvgg_b0",
    "vit_small": "vit_small_patch16_224",
    "vit_tiny": "vit_tiny_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "nasnet": "nasnetalarge",
    "proxylessnas": "spnasnet_100",
}


def _factory(timm_name: str):
    def build(options: TimmOptions, image_size: int):
        return build_timm(timm_name, options, image_size)

    return build


@sassl_core.hookimpl
def sassl_register_backbones(register):
    for name, timm_name in PAPER_BACKBONES.items():
        register(name, _factory(timm_name), TimmOptions)
