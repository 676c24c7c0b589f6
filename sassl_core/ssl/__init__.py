"""Shared machinery of self-supervised methods: MLP builders, losses,
momentum (EMA) updates and the gradient-keeping all_gather. Method plugins import from here;
the method interface itself is :class:`sassl_core.interfaces.SSLMethod`."""

from sassl_core.ssl.distributed import gather_with_grad, world_info
from sassl_core.ssl.losses import byol_regression_loss, info_nce, negative_cosine_similarity, nt_xent
from sassl_core.ssl.mlp import build_mlp
from sassl_core.ssl.momentum import MomentumMethod, cosine_momentum, ema_update, frozen_copy

__all__ = [
    "MomentumMethod",
    "build_mlp",
    "byol_regression_loss",
    "cosine_momentum",
    "ema_update",
    "frozen_copy",
    "gather_with_grad",
    "info_nce",
    "negative_cosine_similarity",
    "nt_xent",
    "world_info",
]
