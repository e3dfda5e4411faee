"""FID arithmetic: the Fréchet distance against closed forms and scipy, the statistics, and reading the
statistics files of clean-fid and EDM."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from loracli.errors import UserError
from loracli.metrics.features import statistics
from loracli.metrics.fid import frechet_distance
from loracli.seeds import format_int_list
from loracli.metrics.reference import read_stats


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_diagonal_gaussians_have_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()  # 5 + (1 + 0 + 4)
    assert expected == 10
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_commuting_covariances_have_the_closed_form():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    l1, l2 = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu = rng.normal(size=6)
    expected = ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_general_gaussians_agree_with_scipy_sqrtm():
    rng = np.random.default_rng(1)
    s1, s2 = random_spd(rng, 20), random_spd(rng, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_statistics_are_the_mean_and_unbiased_covariance_in_float64():
    features = np.array([[1, 2], [3, 6], [5, 4]], dtype=np.float32)
    mu, sigma = statistics(features)
    assert mu.dtype == sigma.dtype == np.float64
    assert mu.tolist() == [3, 4]
    # deviations (-2,-2), (0,2), (2,0): sums of products / (n - 1) = 2
    assert sigma.tolist() == [[4, 2], [2, 4]]


def test_mismatched_dimensions_are_a_user_error():
    with pytest.raises(UserError, match="same Inception network"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])  # EDM's fid.py and clean-fid respectively
def test_statistics_files_of_edm_and_clean_fid(tmp_path, save):
    rng = np.random.default_rng(2)
    mu, sigma = rng.normal(size=5), random_spd(rng, 5)
    save(tmp_path / "cifar10-32x32.npz", mu=mu, sigma=sigma)
    ref = read_stats(tmp_path / "cifar10-32x32.npz")
    assert ref.name == "cifar10-32x32" and ref.n is None
    assert np.array_equal(ref.mu, mu) and np.array_equal(ref.sigma, sigma)
    # the hash is of the numbers, not of the file that held them
    np.savez(tmp_path / "copy.npz", mu=mu, sigma=sigma, extra=np.zeros(1))
    assert read_stats(tmp_path / "copy.npz").sha256 == ref.sha256


def test_malformed_statistics_are_user_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.zeros((3, 2)))
    with pytest.raises(UserError, match="expected \\[D\\] and \\[D, D\\]"):
        read_stats(tmp_path / "bad.npz")
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    assert read_stats(tmp_path / "images.npz") is None  # not statistics: images to compute them from
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="could not be read"):
        read_stats(tmp_path / "junk.npz")


def test_seed_lists_are_recorded_compactly():
    assert format_int_list(range(50000)) == "0-49999"
    assert format_int_list([0, 1, 2, 5, 7, 8, 3]) == "0-2,5,7-8,3"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_agrees_with_clean_fids_own_frechet_distance():
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    rng = np.random.default_rng(3)
    args = (rng.normal(size=8), random_spd(rng, 8), rng.normal(size=8), random_spd(rng, 8))
    assert frechet_distance(*args) == pytest.approx(cleanfid_frechet(*args), rel=1e-12)
