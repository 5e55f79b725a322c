"""pyro_vae.posterior.clouds: point clouds of q(z|x) in a 2-D latent plane."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_vae import (
    MLP,
    VAE,
    BernoulliLikelihood,
    ConfigError,
    FlowGuide,
    FullCovarianceGuide,
)
from pyro_vae.posterior.clouds import plot_point_clouds, point_clouds, sigma_ellipse

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _vae(z_dim: int = 2, guide=None) -> VAE:
    return VAE(MLP(6, [4], activation="tanh"), MLP(z_dim, [4]), BernoulliLikelihood(4, 6), guide=guide, z_dim=z_dim)


def test_writes_a_png_and_the_draws_have_mean_mu_and_sd_sigma(tmp_path, tiny_binary):
    vae = _vae()
    path = tmp_path / "clouds.png"
    clouds = plot_point_clouds(vae, tiny_binary, [0, 5, 9], path, num_draws=4000)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    assert clouds.draws.shape == (4000, 3, 2)
    np.testing.assert_array_equal(clouds.index, [0, 5, 9])
    assert clouds.labels == ("row 0", "row 5", "row 9")
    with torch.no_grad():
        loc, scale = vae.encode(tiny_binary[[0, 5, 9]])
    np.testing.assert_allclose(clouds.loc, loc.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(clouds.scale, scale.double().numpy(), rtol=1e-6)
    # The diagonal guide's own covariance diag(sigma^2) is what the ellipses are drawn from.
    assert clouds.gaussian
    np.testing.assert_allclose(clouds.covariance, np.stack([np.diag(s**2) for s in clouds.scale]), rtol=1e-6)
    # N = 4000 draws per coordinate: s.e. of the mean sigma / sqrt(N) = sigma / 63, of the
    # sd sigma / sqrt(2 (N - 1)) = sigma / 89. Tolerance 5 standard errors (12 checks).
    n = clouds.num_draws
    assert np.all(np.abs(clouds.mean - clouds.loc) <= 5 * clouds.scale / math.sqrt(n))
    assert np.all(np.abs(clouds.sd - clouds.scale) <= 5 * clouds.scale / math.sqrt(2 * (n - 1)))


def test_draws_are_seeded_and_leave_the_callers_random_state_alone(tiny_binary):
    vae = _vae()
    state = torch.get_rng_state()
    first = point_clouds(vae, tiny_binary, [1, 2], num_draws=50, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    again = point_clouds(vae, tiny_binary, [1, 2], num_draws=50, seed=3)
    other = point_clouds(vae, tiny_binary, [1, 2], num_draws=50, seed=4)
    np.testing.assert_array_equal(first.draws, again.draws)
    assert not np.array_equal(first.draws, other.draws)


def test_full_covariance_guide_gives_its_own_tilted_covariance(tiny_binary):
    vae = _vae(guide=FullCovarianceGuide(4, 2))
    with torch.no_grad():
        vae.variational.raw_tril.bias.copy_(torch.tensor([0.0, 1.5, 0.0]))  # a strong correlation
        tril = vae.variational.scale_tril(vae.encoder(tiny_binary[[4]]))[0]
    clouds = point_clouds(vae, tiny_binary, [4], num_draws=20)
    assert clouds.gaussian
    np.testing.assert_allclose(clouds.covariance[0], (tril @ tril.T).double().numpy(), rtol=1e-5)
    assert abs(clouds.covariance[0, 0, 1]) > 0.1


def test_a_flow_guide_draws_its_ellipses_from_the_draws(tiny_binary):
    vae = _vae(guide=FlowGuide(4, 2, num_layers=1))
    clouds = point_clouds(vae, tiny_binary, [0, 1], num_draws=300)
    assert not clouds.gaussian
    np.testing.assert_allclose(clouds.covariance[1], np.cov(clouds.draws[:, 1].T), rtol=1e-10)


def test_sigma_ellipse_has_the_covariance_axes():
    patch = sigma_ellipse(np.array([1.0, 2.0]), np.array([[4.0, 0.0], [0.0, 1.0]]), 2)
    assert patch.center == (1.0, 2.0)
    assert (patch.width, patch.height) == pytest.approx((8.0, 4.0))  # 2 k sd along each axis
    assert patch.angle % 180 == pytest.approx(0.0)


def test_rejects_a_latent_that_is_not_2d_with_one_clear_line(tmp_path, tiny_binary):
    path = tmp_path / "clouds.png"
    with pytest.raises(ConfigError, match=r"2-D latent plane.*z_dim=3.*`z_dim` 2") as info:
        plot_point_clouds(_vae(z_dim=3), tiny_binary, [0], path)
    assert "\n" not in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize(
    "index, message",
    [
        ([64], r"index 64 out of range: x has 64 rows; pass rows from 0 to 63"),
        ([0, -1], r"index -1 out of range"),
        ([3, 3], r"repeats a row"),
        ([], r"index is empty"),
        ([0.5], r"integer rows"),
    ],
)
def test_rejects_bad_rows(tmp_path, tiny_binary, index, message):
    path = tmp_path / "clouds.png"
    with pytest.raises(ConfigError, match=message) as info:
        plot_point_clouds(_vae(), tiny_binary, index, path)
    assert "\n" not in str(info.value)
    assert not path.exists()


def test_rejects_too_few_draws_and_wrong_labels(tiny_binary):
    with pytest.raises(ConfigError, match="`num_draws` must be >= 2"):
        point_clouds(_vae(), tiny_binary, [0], num_draws=1)
    with pytest.raises(ConfigError, match=r"one label per row \(2\), got 1"):
        point_clouds(_vae(), tiny_binary, [0, 1], labels=["only one"])
