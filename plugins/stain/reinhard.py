"""Reinhard stain normalisation (Reinhard et al. 2001, "Color transfer between images").

Each image's per-channel mean and standard deviation in CIELAB are matched to those of the
target images (the paper worked in the decorrelated l-alpha-beta space; CIELAB is the common
choice in histopathology tools and is used here).
"""

from __future__ import annotations

import sassl_core
from sassl_core.color import lab_to_rgb, rgb_to_lab
from sassl_plugins.stain.channel_stats import ChannelStatsNormaliser


def build(options) -> ChannelStatsNormaliser:
    return ChannelStatsNormaliser(to_space=rgb_to_lab, from_space=lab_to_rgb)


@sassl_core.hookimpl
def sassl_register_stain_transforms(register):
    register("reinhard", build)
