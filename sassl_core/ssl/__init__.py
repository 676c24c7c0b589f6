"""Shared machinery of self-supervised methods: the method interface, MLP builders, losses,
momentum (EMA) updates and the gradient-keeping all_gather. Method plugins import from here."""

from sassl_core.ssl.base import SSLMethod, SSLOutput

__all__ = ["SSLMethod", "SSLOutput"]
