"""Umeyama: exact recovery, noise, degenerate input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from loc3r.engine.alignment import AlignmentError, umeyama


def test_recovers_a_known_similarity_exactly():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    rotation = Rotation.from_euler("zyx", [40, -10, 25], degrees=True).as_matrix()
    dst = 2.5 * src @ rotation.T + np.array([1.0, -2.0, 0.5])
    fit = umeyama(src, dst)
    np.testing.assert_allclose(fit.rotation, rotation, atol=1e-10)
    assert fit.scale == pytest.approx(2.5) and fit.rms < 1e-10
    np.testing.assert_allclose(fit.apply(src), dst, atol=1e-9)
    rigid = umeyama(src, src @ rotation.T + 3.0, with_scale=False)
    assert rigid.scale == 1.0 and rigid.rms < 1e-10


def test_noise_gives_a_close_fit():
    rng = np.random.default_rng(1)
    src = rng.uniform(-3, 3, size=(50, 3))
    rotation = Rotation.from_euler("z", 70, degrees=True).as_matrix()
    dst = src @ rotation.T + rng.normal(0, 0.01, size=src.shape)
    fit = umeyama(src, dst, with_scale=False)
    angle = np.degrees(Rotation.from_matrix(fit.rotation @ rotation.T).magnitude())
    assert angle < 0.5 and 0.005 < fit.rms < 0.03


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        (np.zeros((2, 3)), "at least 3"),
        (np.ones((5, 3)), "do not move"),
        (np.outer(np.arange(5.0), [1.0, 2.0, 0.5]), "a line"),
    ],
)
def test_degenerate_input_is_an_error(src, reason):
    with pytest.raises(AlignmentError, match=reason):
        umeyama(src, src + 1.0)
