"""Mean/std stain normalisation: per-channel RGB mean and standard deviation matching."""

from __future__ import annotations

import sassl_core
from sassl_plugins.stain.channel_stats import ChannelStatsNormaliser


def build(options) -> ChannelStatsNormaliser:
    """Each image's R, G, B means and standard deviations are set to the targets'."""
    return ChannelStatsNormaliser()


@sassl_core.hookimpl
def sassl_register_stain_transforms(register):
    register("meanstd", build)
