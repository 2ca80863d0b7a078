import numpy as np

from geosr.arrays import block_mean
from geosr.io.read import read_full
from geosr.sample_data import write_sample_scene


def test_sample_scene_is_terrain_driven_and_nested(tmp_path):
    s = write_sample_scene(tmp_path, size_px=64, factor=8, n_train=3, n_test=2)
    dem, g = read_full(s.dem)
    truth, _ = read_full(s.test_truth)
    coarse, cg = read_full(s.test_coarse)
    assert g.shape == (64, 64) and cg.shape == (8, 8) and cg.res == 8 * g.res
    np.testing.assert_allclose(coarse, block_mean(truth, 8), rtol=1e-6)
    # temperature falls with elevation on every day
    for day in truth:
        assert np.corrcoef(day.ravel(), dem[0].ravel())[0, 1] < -0.5
