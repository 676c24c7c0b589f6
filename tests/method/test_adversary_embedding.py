"""``sassl.embedding``: the discriminator reads the projector outputs (paper), the encoder's
pooled features or the style statistics of its levels, and a method that does not return its
pooled features is refused by name."""

import types

import pytest
import torch

import sassl_core
from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.interfaces import SSLMethod, SSLOutput
from sassl_core.plugins import load_plugins
from sassl_core.train.pretrain import build_pretrain_program
from sassl_core.train.runtime import Runtime

CPU = Runtime(torch.device("cpu"))
SOURCES = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _cfg(method: str, embedding: str, options: dict | None = None) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"image_size": 32},
            "backbone": {"name": "resnet18"},
            "ssl": {
                "method": method,
                "options": {"proj_dim": 24, "proj_hidden_dim": 32} if options is None else options,
            },
            "sassl": {"embedding": embedding, "hidden_dim": 16},
            "pretrain": {"steps": 1, "batch_size": 8},
            "trainer": {"device": "cpu"},
        }
    )


def _first_discriminator_layer(program) -> torch.nn.Linear:
    return next(m for m in program.modules["discriminator"].modules() if isinstance(m, torch.nn.Linear))


# resnet18 pools 512 features; its 5 levels have 64+64+128+256+512 channels, a mean and a std each
@pytest.mark.parametrize("embedding, width", [("projector", 24), ("encoder", 512), ("style", 2 * 1024)])
def test_discriminator_reads_the_chosen_embedding_and_moves_the_encoder(embedding, width):
    plugins = load_plugins()
    program, model = build_pretrain_program(_cfg("simsiam", embedding), plugins, CPU, SOURCES)
    assert _first_discriminator_layer(program).in_features == width
    batch = {"image": torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8), "index": torch.arange(8)}
    phases = program.phases(batch, 0)
    next(phases)  # the discriminator phase
    generator = next(phases)
    encoder_weight = model.encoder.conv1.weight
    (grad,) = torch.autograd.grad(generator.loss, encoder_weight)
    assert grad.abs().sum() > 0 and {"a_same", "a_diff"} <= set(generator.logs)


class _ProjectorOnly(SSLMethod):
    def __init__(self, encoder, feature_dim):
        super().__init__(encoder)
        self.projector = torch.nn.Linear(feature_dim, 8)

    def forward(self, x1, x2):
        z1, z2 = self.projector(self.encoder(x1)), self.projector(self.encoder(x2))
        return SSLOutput((z1 - z2).pow(2).mean(), z1, z2)


def test_a_method_without_encoder_features_is_refused_by_name():
    module = types.ModuleType("projector_only")
    module.sassl_register_ssl_methods = sassl_core.hookimpl(
        lambda register: register(
            "projector_only", lambda options, encoder, feature_dim: _ProjectorOnly(encoder, feature_dim)
        )
    )
    plugins = load_plugins(extra=[("projector_only", module)])
    with pytest.raises(
        UserError,
        match=r"sassl.embedding: ssl method 'projector_only' does not return its encoder features .*expected 'projector'",
    ):
        build_pretrain_program(_cfg("projector_only", "encoder", options={}), plugins, CPU, SOURCES)
    build_pretrain_program(_cfg("projector_only", "projector", options={}), plugins, CPU, SOURCES)  # the default works
