"""The adversarial objective: D and G steps move the affinities as paper Eq. 5-6 say."""

import pytest
import torch

from sassl_core.method.adversary import StainAdversary

SOURCES = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])


def embeddings():
    """Two views per patch; each source shifts its patches (a stain cast) in its own direction."""
    gen = torch.Generator().manual_seed(0)
    cast = torch.randn(3, 16, generator=gen)[SOURCES]
    s1 = cast + 0.3 * torch.randn(9, 16, generator=gen)
    s2 = cast + 0.3 * torch.randn(9, 16, generator=gen)
    return s1, s2


def adversary(**kwargs):
    torch.manual_seed(0)
    return StainAdversary(16, hidden_dim=32, layers=3, temperature=4.0, **kwargs)


def _floats(stats):
    return {k: float(v) for k, v in stats.items()}


def test_stats_are_detached_scalars_and_consistent():
    s1, s2 = embeddings()
    s1.requires_grad_(True)
    loss, stats = adversary().discriminator_loss(s1, s2, SOURCES)
    assert set(stats) == {"a_same", "a_diff", "L_D"}
    assert all(v.shape == () and not v.requires_grad for v in stats.values())
    assert float(stats["L_D"]) == pytest.approx(float(stats["a_diff"] - stats["a_same"]))
    assert loss.item() == pytest.approx(float(stats["L_D"]), rel=1e-6)


def test_discriminator_step_separates_sources():
    adv = adversary()
    s1, s2 = embeddings()
    s1.requires_grad_(True)
    optimizer = torch.optim.SGD(adv.parameters(), lr=0.05)
    loss, before = adv.discriminator_loss(s1, s2, SOURCES)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert s1.grad is None  # D's loss reads detached embeddings
    _, after = adv.discriminator_loss(s1, s2, SOURCES)
    assert after["a_same"] - after["a_diff"] > before["a_same"] - before["a_diff"]


def test_generator_step_raises_all_affinities_and_leaves_d_untouched():
    adv = adversary()
    s1, s2 = (s.requires_grad_(True) for s in embeddings())
    d_before = {k: v.clone() for k, v in adv.state_dict().items()}
    optimizer = torch.optim.SGD([s1, s2], lr=0.5)
    term, before = adv.generator_term(s1, s2, SOURCES, step=0)
    assert term.item() == pytest.approx(-float(before["a_same"] + before["a_diff"]), rel=1e-6)
    optimizer.zero_grad()
    term.backward()
    assert s1.grad.abs().sum() > 0  # the gradient reaches the embeddings through D
    assert all(p.grad is None for p in adv.parameters())  # and none lands on D
    optimizer.step()
    _, after = adv.generator_term(s1, s2, SOURCES, step=0)
    assert after["a_same"] + after["a_diff"] > before["a_same"] + before["a_diff"]
    assert all(torch.equal(v, adv.state_dict()[k]) for k, v in d_before.items())


def test_generator_step_on_an_encoder_keeps_d_bit_identical():
    adv = adversary()
    encoder = torch.nn.Linear(16, 16)
    s1, s2 = embeddings()
    d_before = [p.clone() for p in adv.parameters()]
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(adv.parameters()), lr=0.1)
    term, _ = adv.generator_term(encoder(s1), encoder(s2), SOURCES, step=0)
    optimizer.zero_grad()
    term.backward()
    optimizer.step()
    assert encoder.weight.grad is not None
    assert all(torch.equal(a, b) for a, b in zip(adv.parameters(), d_before))


def test_lam_warms_up_linearly():
    adv = adversary(lam=2.0, warmup_steps=10)
    assert [adv.lam_at(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert adversary(lam=0.5).lam_at(0) == 0.5
    s1, s2 = embeddings()
    term, _ = adv.generator_term(s1, s2, SOURCES, step=0)
    assert term.item() == 0.0


def test_generator_term_scales_with_lam():
    s1, s2 = embeddings()
    one, stats = adversary(lam=1.0).generator_term(s1, s2, SOURCES, step=0)
    three, _ = adversary(lam=3.0).generator_term(s1, s2, SOURCES, step=0)
    assert three.item() == pytest.approx(3 * one.item(), rel=1e-6)


def test_single_source_batch_has_no_difference_term():
    s1, s2 = embeddings()
    loss, stats = adversary().discriminator_loss(s1, s2, torch.zeros(9, dtype=torch.long))
    assert stats["a_diff"] == 0.0
    assert loss.item() == pytest.approx(-float(stats["a_same"]), rel=1e-6)


def test_raw_affinity_option():
    s1, s2 = embeddings()
    _, squashed = adversary().discriminator_loss(s1, s2, SOURCES)
    _, raw = adversary(squash=False).discriminator_loss(s1, s2, SOURCES)
    assert 0 < squashed["a_same"] < 1
    assert float(raw["a_same"]) != pytest.approx(float(squashed["a_same"]))


def test_discriminator_reads_unit_embeddings_unless_told_otherwise():
    s1, s2 = embeddings()
    _, stats = adversary().discriminator_loss(s1, s2, SOURCES)
    _, inflated = adversary().discriminator_loss(10 * s1, 10 * s2, SOURCES)
    assert _floats(inflated) == pytest.approx(_floats(stats), rel=1e-5)  # the generator cannot win by scaling S
    _, raw = adversary(normalize=False).discriminator_loss(s1, s2, SOURCES)
    _, raw_inflated = adversary(normalize=False).discriminator_loss(10 * s1, 10 * s2, SOURCES)
    assert float(raw_inflated["a_same"]) != pytest.approx(float(raw["a_same"]))


def test_confusion_generator_step_narrows_the_gap_d_found():
    adv = adversary(generator="confusion", cosine=True)
    s1, s2 = (s.requires_grad_(True) for s in embeddings())
    optimizer = torch.optim.SGD([s1, s2], lr=0.5)
    term, before = adv.generator_term(s1, s2, SOURCES, step=0)
    assert term.item() == pytest.approx(float(before["a_same"] - before["a_diff"]), rel=1e-6)  # = -L_D
    optimizer.zero_grad()
    term.backward()
    optimizer.step()
    _, after = adv.generator_term(s1, s2, SOURCES, step=0)
    assert float(after["a_same"] - after["a_diff"]) < float(before["a_same"] - before["a_diff"])
