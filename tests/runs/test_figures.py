"""The run's figures show the numbers they are given: the artists of each figure are
read back (lines, image tiles, points, ellipses), and the PNG's pixels are measured."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.image import imread
from matplotlib.patches import Ellipse

from pyro_vae.runs import figures


@pytest.fixture
def drawn(monkeypatch):
    """The figures passed to ``save_png``, which still writes each PNG."""
    captured = []
    real = figures.save_png

    def save(fig, path, **kwargs):
        captured.append(fig)
        real(fig, path, **kwargs)

    monkeypatch.setattr(figures, "save_png", save)
    return captured


def _tiles(grid: np.ndarray, h: int, w: int) -> list[list[np.ndarray]]:
    """The (h, w) tiles of an image grid with a 1-pixel gap around every tile."""
    rows, cols = (grid.shape[0] - 1) // (h + 1), (grid.shape[1] - 1) // (w + 1)
    return [
        [grid[1 + i * (h + 1) : 1 + i * (h + 1) + h, 1 + j * (w + 1) : 1 + j * (w + 1) + w] for j in range(cols)]
        for i in range(rows)
    ]


def test_history_plots_the_training_loss_and_the_validation_nelbo(tmp_path, drawn):
    history = [{"epoch": e, "train_loss": 50.0 - 3 * e, "val_elbo": -52.0 + 2 * e, "seconds": 1.0} for e in (1, 2, 3)]
    figures.plot_history(history, tmp_path / "loss.png")
    (ax,) = drawn[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"train loss (-ELBO)", "validation -ELBO"}
    np.testing.assert_array_equal(lines["train loss (-ELBO)"].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines["train loss (-ELBO)"].get_ydata(), [47.0, 44.0, 41.0])
    np.testing.assert_array_equal(lines["validation -ELBO"].get_ydata(), [50.0, 48.0, 46.0])  # -val_elbo
    # Without validation data only the training curve is drawn.
    figures.plot_history([{**h, "val_elbo": math.nan} for h in history], tmp_path / "loss2.png")
    assert [line.get_label() for line in drawn[1].axes[0].get_lines()] == ["train loss (-ELBO)"]


def test_reconstructions_show_each_input_above_its_reconstruction(tmp_path, drawn):
    rng = np.random.default_rng(0)
    inputs, recons = rng.random((5, 12)), rng.random((5, 12))
    figures.plot_reconstructions(inputs, recons, (3, 4), tmp_path / "r.png")
    (image,) = drawn[0].axes[0].get_images()
    tiles = _tiles(np.ma.filled(image.get_array(), np.nan), 3, 4)
    assert len(tiles) == 2 and len(tiles[0]) == 5
    for j in range(5):
        np.testing.assert_array_equal(tiles[0][j], inputs[j].reshape(3, 4))  # top row: the inputs
        np.testing.assert_array_equal(tiles[1][j], recons[j].reshape(3, 4))  # below: their reconstructions
    # Feature vectors (no image shape): one heat-map column per data point.
    figures.plot_reconstructions(inputs, recons, (), tmp_path / "r2.png")
    top, bottom = (ax.get_images()[0].get_array() for ax in drawn[1].axes)
    np.testing.assert_array_equal(top, inputs.T)
    np.testing.assert_array_equal(bottom, recons.T)


def test_samples_fill_a_square_grid_and_the_png_shows_their_brightness(tmp_path, drawn):
    samples = np.linspace(0, 1, 10 * 4).reshape(10, 4)
    figures.plot_samples(samples, (2, 2), tmp_path / "s.png")
    grid = drawn[0].axes[0].get_images()[0].get_array()
    rows = _tiles(np.ma.filled(grid, np.nan), 2, 2)
    assert [len(row) for row in rows] == [4, 4, 4]  # ceil(sqrt(10)) = 4 columns, 3 rows
    for k, tile in enumerate(t for row in rows for t in row):
        if k < 10:
            np.testing.assert_array_equal(tile, samples[k].reshape(2, 2))  # row by row
        else:
            assert np.isnan(tile).all()  # empty cells stay background
    figures.plot_samples(samples, (2, 2), tmp_path / "s5.png", columns=5)
    rows = _tiles(np.ma.filled(drawn[1].axes[0].get_images()[0].get_array(), np.nan), 2, 2)
    assert [len(row) for row in rows] == [5, 5]
    np.testing.assert_array_equal(rows[1][0], samples[5].reshape(2, 2))
    # The pixels: all-white samples make a brighter picture than all-black ones. The grid
    # covers most of the figure; its mean grey differs by far more than the frame and text.
    brightness = []
    for value in (0.0, 1.0):
        path = tmp_path / f"s{value}.png"
        figures.plot_samples(np.full((9, 64), value), (8, 8), path)
        pixels = imread(path)[..., :3]  # (H, W, 3) in [0, 1]
        assert pixels.shape[0] > 300 and pixels.shape[1] > 300
        brightness.append(float(pixels.mean()))
    assert brightness[1] - brightness[0] > 0.3, brightness


def test_latent_plot_has_one_point_per_input_and_an_ellipse_for_every_25th(tmp_path, drawn):
    rng = np.random.default_rng(1)
    loc, scale = rng.normal(size=(60, 2)), rng.uniform(0.1, 0.5, size=(60, 2))
    labels = np.arange(60) % 10
    figures.plot_latent(loc, scale, labels, tmp_path / "latent.png")
    ax = drawn[0].axes[0]
    (points,) = ax.collections
    np.testing.assert_allclose(points.get_offsets(), loc)
    np.testing.assert_array_equal(points.get_array(), labels)  # coloured by label
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 3  # inputs 0, 25, 50
    for patch, i in zip(ellipses, (0, 25, 50), strict=True):
        assert patch.center == pytest.approx(tuple(loc[i]))
        assert (patch.width, patch.height) == pytest.approx(tuple(2 * scale[i]))  # 1 sigma each side
    assert len(drawn[0].axes) == 2  # the colour bar of the labels
    figures.plot_latent(loc, scale, None, tmp_path / "latent2.png")
    assert len(drawn[1].axes) == 1
