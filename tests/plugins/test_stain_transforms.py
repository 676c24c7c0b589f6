"""Stain-transform plugins: registration, the normalisers' statistics, and agreement with
independent references (skimage / numpy re-derivations here, albumentations' Macenko)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.color
import torch

from sassl_core.color import as_float_images
from sassl_core.errors import UserError
from sassl_core.plugins import load_plugins
from tests.fixtures.he_images import SYNTHETIC_STAINS, shared_rgb, synthetic_he, synthetic_sparse_stains

NAMES = ["reinhard", "macenko", "vahadane", "meanstd", "hed_jitter"]
UNIT_STAINS = SYNTHETIC_STAINS / np.linalg.norm(SYNTHETIC_STAINS, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def stain():
    return load_plugins()["stain"]


def to_uint8(batch: torch.Tensor) -> np.ndarray:
    return (batch.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).byte().cpu().numpy()


def target_and_source():
    """A pinkish target and a bluer, darker source (synthetic: always present)."""
    target = synthetic_he(64, seed=1)
    source = synthetic_he(64, seed=2, stains=np.array([[0.75, 0.60, 0.25], [0.25, 0.80, 0.45]]), strength=(1.6, 0.9))
    return target, source


@pytest.mark.parametrize("name", NAMES)
def test_every_shipped_transform_changes_a_differently_stained_batch(stain, name):
    """Shape, dtype, device and range are every transform's contract (tests/contract/test_stain_contract.py)."""
    target, source = target_and_source()
    batch = as_float_images(np.stack([source, target]))
    out = stain.create(name, {}).fit(target[None])(batch)
    assert (out - batch).abs().mean() > 1e-3


@pytest.mark.parametrize("name", ["reinhard", "macenko", "vahadane", "meanstd"])
def test_normaliser_needs_fit(stain, name):
    with pytest.raises(RuntimeError, match="fit"):
        stain.create(name, {})(torch.rand(1, 3, 8, 8))


def test_options_are_validated_by_the_registry(stain):
    with pytest.raises(UserError, match="macenko"):
        stain.create("macenko", {"bogus": 1})
    with pytest.raises(UserError, match="scale"):
        stain.create("hed_jitter", {"scale": [1.2, 0.8]})


def test_meanstd_matches_channel_means_and_stds(stain):
    target, source = target_and_source()
    out = stain.create("meanstd", {}).fit(target[None])(as_float_images(source[None]))
    reference = target.reshape(-1, 3) / 255
    result = out[0].flatten(1).numpy()
    np.testing.assert_allclose(result.mean(1), reference.mean(0), atol=0.01)
    np.testing.assert_allclose(result.std(1), reference.std(0), atol=0.01)


def test_reinhard_matches_lab_means_and_stds(stain):
    target, source = target_and_source()
    out = to_uint8(stain.create("reinhard", {}).fit(target[None])(as_float_images(source[None])))[0]
    lab_out, lab_target = skimage.color.rgb2lab(out).reshape(-1, 3), skimage.color.rgb2lab(target).reshape(-1, 3)
    lab_source = skimage.color.rgb2lab(source).reshape(-1, 3)
    assert np.abs(lab_source.mean(0) - lab_target.mean(0)).max() > 5  # the source starts far away
    np.testing.assert_allclose(lab_out.mean(0), lab_target.mean(0), atol=1.0)
    np.testing.assert_allclose(lab_out.std(0), lab_target.std(0), atol=1.0)


def reinhard_reference(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer re-derived with skimage (independent of the package)."""
    lab_t, lab_s = skimage.color.rgb2lab(target), skimage.color.rgb2lab(source)
    mean_t, std_t = lab_t.reshape(-1, 3).mean(0), lab_t.reshape(-1, 3).std(0)
    mean_s, std_s = lab_s.reshape(-1, 3).mean(0), lab_s.reshape(-1, 3).std(0)
    return np.clip(skimage.color.lab2rgb((lab_s - mean_s) / std_s * std_t + mean_t), 0, 1)


def test_reinhard_agrees_with_skimage_rederivation_on_real_images(stain):
    target, source = shared_rgb("target_image.png", max_side=400), shared_rgb("histo.jpg")
    ours = stain.create("reinhard", {}).fit(target[None])(as_float_images(source[None]).double())
    expected = reinhard_reference(target, source)
    diff = np.abs(ours[0].permute(1, 2, 0).numpy() - expected)
    assert diff.mean() < 1e-4 and diff.max() < 2e-3


def macenko_reference(image: np.ndarray, beta: float = 0.15, alpha: float = 1.0):
    """Macenko's stain vectors (3, 2), concentrations and 99th percentiles, re-derived in numpy
    after the published reference code (OD = -ln(I/255), floored at 1e-6)."""
    od = -np.log(np.maximum(image.reshape(-1, 3) / 255.0, 1e-6))
    tissue = od[~np.any(od < beta, axis=1)]
    _, vectors = np.linalg.eigh(np.cov(tissue.T))
    plane = vectors[:, 1:3]
    if plane[:, 1].sum() < 0:  # orient the first principal axis along positive OD
        plane[:, 1] *= -1
    projected = tissue @ plane
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v_min = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_max = plane @ np.array([np.cos(hi), np.sin(hi)])
    he = np.stack((v_min, v_max) if v_min[0] > v_max[0] else (v_max, v_min), axis=1)
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    return he, conc, np.percentile(conc, 99, axis=1)


@pytest.fixture(scope="module")
def real_pair():
    return shared_rgb("target_image.png", max_side=500), shared_rgb("histo.jpg")


def test_macenko_agrees_with_numpy_rederivation_on_real_images(stain, real_pair):
    target, source = real_pair
    transform = stain.create("macenko", {"max_estimation_pixels": 10**7}).fit(target[None])
    he_t, _, max_t = macenko_reference(target)
    np.testing.assert_allclose(transform.target_stains.numpy(), he_t.T, atol=2e-3)
    np.testing.assert_allclose(transform.target_max.numpy(), max_t, rtol=2e-3)

    ours = transform(as_float_images(source[None]))[0].permute(1, 2, 0).numpy()
    _, conc_s, max_s = macenko_reference(source)
    expected = np.clip(np.exp(-(he_t @ (conc_s * (max_t / max_s)[:, None]))), 0, 1).T.reshape(source.shape)
    diff = np.abs(ours - expected)
    assert diff.mean() < 1e-3 and np.percentile(diff, 99) < 5e-3


def test_macenko_stains_close_to_albumentations(stain, real_pair):
    """albumentations' Macenko uses another tissue threshold; the vectors still nearly agree."""
    pixel = pytest.importorskip("albumentations.augmentations.pixel.functional")
    for image in real_pair:
        reference = pixel.MacenkoNormalizer()
        reference.fit(image)
        ours = stain.create("macenko", {}).fit(image[None]).target_stains.numpy()
        cosine = (ours * reference.stain_matrix_target).sum(1)
        assert (cosine > 0.97).all(), cosine


@pytest.mark.parametrize("name", ["macenko", "vahadane"])
@pytest.mark.parametrize("seed", [0, 1])
def test_stain_vectors_recovered_on_synthetic_images(stain, name, seed):
    transform = stain.create(name, {}).fit(synthetic_sparse_stains(64, seed)[None])
    cosine = (transform.target_stains.numpy() * UNIT_STAINS).sum(1)
    assert (cosine > 0.99).all(), cosine


def sparse_pair():
    """Target and source with different stain vectors, as sparse stain mixtures."""
    target = synthetic_sparse_stains(64, seed=3)
    source = synthetic_sparse_stains(64, seed=4, stains=np.array([[0.75, 0.60, 0.25], [0.25, 0.80, 0.45]]))
    return target, source


@pytest.mark.parametrize("name", ["macenko", "vahadane"])
def test_normalised_source_takes_the_target_stains(stain, name):
    """Refitting on the normalised source gives back the target's matrix and max concentrations."""
    target, source = sparse_pair()
    transform = stain.create(name, {}).fit(target[None])
    before = stain.create(name, {}).fit(source[None])
    after = stain.create(name, {}).fit(to_uint8(transform(as_float_images(source[None]))))
    cos_before = (before.target_stains * transform.target_stains).sum(1)
    cos_after = (after.target_stains * transform.target_stains).sum(1)
    assert (cos_after > 0.99).all() and cos_after.min() > cos_before.min() + 0.01, (cos_before, cos_after)
    assert torch.allclose(after.target_max, transform.target_max, rtol=0.15)  # L1 codes shrink a little


@pytest.mark.parametrize("name", ["macenko", "vahadane"])
def test_blank_images_pass_unchanged(stain, name):
    transform = stain.create(name, {}).fit(synthetic_sparse_stains(32)[None])
    blank = torch.ones(2, 3, 16, 16) * 0.97
    assert torch.equal(transform(blank), blank)


def test_vahadane_on_real_images_keeps_haematoxylin_and_eosin_apart(stain, real_pair):
    target, _ = real_pair
    transform = stain.create("vahadane", {"iterations": 60}).fit(target[None])
    h, e = transform.target_stains.numpy()
    assert h[0] > e[0] and e[1] > h[1]  # H absorbs more red, E more green
    assert (h * e).sum() < 0.9


def test_hed_jitter_seeded_and_identity_at_p0(stain):
    batch = as_float_images(synthetic_he(32, seed=5)[None].repeat(4, 0))
    a = stain.create("hed_jitter", {"seed": 3})(batch)
    b = stain.create("hed_jitter", {"seed": 3})(batch)
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # one draw per image
    assert torch.equal(stain.create("hed_jitter", {"p": 0.0})(batch), batch)
