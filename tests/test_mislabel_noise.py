"""Label-noise kinds for mislabel experiments: symmetric, pairs, class-conditional (exact shares, seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.cli import build_parser
from precompute.config import DataConfig, RunConfig
from precompute.data.dataset import (
    _allocate,
    apply_label_noise,
    confusable_pairs,
    inject_class_conditional_noise,
    inject_label_noise,
    nearest_centroid_confusion,
    pairs_matrix,
)
from precompute.data.loading import load_dataset
from precompute.errors import ConfigError, DataError


def _labels(counts=(50, 41, 30, 27, 60)) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_pairs_flip_exactly_the_share_of_each_pair_class_to_its_partner():
    y = _labels()
    pairs = [(0, 3), (1, 4)]
    noisy, flipped = inject_class_conditional_noise(y, pairs_matrix(pairs, 5), 0.2, seed=7)
    partner = {0: 3, 3: 0, 1: 4, 4: 1}
    for c, n_c in enumerate(np.bincount(y)):
        members = y == c
        if c in partner:
            assert flipped[members].sum() == round(0.2 * n_c)
            assert (noisy[members & flipped] == partner[c]).all()
        else:
            assert not flipped[members].any()  # class 2 is in no pair
    assert (flipped == (noisy != y)).all()
    again, _ = inject_class_conditional_noise(y, pairs_matrix(pairs, 5), 0.2, seed=7)
    other, _ = inject_class_conditional_noise(y, pairs_matrix(pairs, 5), 0.2, seed=8)
    assert (again == noisy).all() and not (other == noisy).all()


def test_class_conditional_splits_flips_by_the_matrix_rows_exactly():
    y = _labels((100, 100, 100))
    m = np.array([[0.0, 3.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 9.0]])  # diagonal ignored; row 1: never flipped
    noisy, flipped = inject_class_conditional_noise(y, m, 0.2, seed=0)
    assert flipped[y == 0].sum() == 20 and not flipped[y == 1].any() and flipped[y == 2].sum() == 20
    assert np.bincount(noisy[(y == 0) & flipped], minlength=3).tolist() == [0, 15, 5]
    assert np.bincount(noisy[(y == 2) & flipped], minlength=3).tolist() == [10, 10, 0]
    assert _allocate(7, np.array([1.0, 1.0, 1.0])).tolist() == [3, 2, 2]  # largest remainder, ties by index


def test_symmetric_noise_is_unchanged():
    y = _labels()
    noisy, flipped = inject_label_noise(y, 5, 0.1, 3)
    assert flipped.sum() == round(0.1 * len(y)) and (noisy[flipped] != y[flipped]).all()


def test_confusable_pairs_are_disjoint_and_most_confused_first():
    conf = np.array([[50, 9, 0, 0], [2, 40, 1, 0], [0, 6, 30, 5], [0, 0, 4, 20]])
    assert confusable_pairs(conf, 4) == [(0, 1), (2, 3)]  # 0-1 (11) then 2-3 (9); 1-2 (7) shares classes
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0], [1, 0], [10, 10], [10, 11]])  # 0~1 and 2~3 overlap
    x = np.concatenate([c + rng.normal(0, 0.6, (40, 2)) for c in centres])
    y = np.repeat(np.arange(4), 40)
    c = nearest_centroid_confusion(x, y, 4)
    assert c.sum() == 160 and confusable_pairs(c, 2) == [(0, 1), (2, 3)]


def test_digits_pairs_and_class_conditional_via_config_are_recorded():
    cfg = DataConfig(label_noise=0.2, noise_kind="pairs", noise_pairs=[[1, 7], [3, 8]], noise_seed=1)
    cfg.validate()
    ds = load_dataset(cfg)
    y = ds.y_train_original
    for a, b in ((1, 7), (7, 1), (3, 8), (8, 3)):
        assert ds.flipped[y == a].sum() == round(0.2 * (y == a).sum())
        assert (ds.y_train[(y == a) & ds.flipped] == b).all()
    assert ds.flipped.sum() == ds.extra["label_noise"]["n_flipped"]
    assert not ds.flipped[~np.isin(y, [1, 3, 7, 8])].any()
    auto = DataConfig(label_noise=0.1, noise_kind="class-conditional")
    auto.validate()
    assert auto.noise_kind == "class_conditional"
    ds2 = load_dataset(auto)
    assert ds2.extra["label_noise"]["matrix_from"].startswith("nearest-centroid")
    assert all(ds2.flipped[y == c].sum() == round(0.1 * (y == c).sum()) for c in range(10))


def test_noise_flags_config_validation_and_identity(tmp_path):
    args = build_parser().parse_args(["precompute", "--noise-kind", "pairs", "--noise-pairs", "1:7,3:8"])
    assert args.noise_pairs == [[1, 7], [3, 8]] and args.noise_kind == "pairs"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["precompute", "--noise-pairs", "1-7"])
    for bad, key in (({"noise_kind": "swap"}, "noise_kind"), ({"noise_pairs": [[1, 7]]}, "noise_pairs"),
                     ({"noise_kind": "pairs", "noise_pairs": [[1, 7], [7, 3]]}, "noise_pairs"),
                     ({"noise_kind": "pairs", "noise_pairs": [[1, 1]]}, "noise_pairs"),
                     ({"noise_kind": "class_conditional", "noise_matrix": [[0, 1], [1]]}, "noise_matrix"),
                     ({"noise_kind": "class_conditional", "noise_matrix": str(tmp_path / "no.npy")}, "no.npy")):
        with pytest.raises(ConfigError, match=key):
            RunConfig.from_dict({"data": bad}).validate()
    # defaults stay out of the identity (runs made before these fields existed still match)
    assert "noise_kind" not in RunConfig().validate().identity()["data"]
    path = tmp_path / "m.npy"
    np.save(path, np.ones((3, 3)))
    cfg = RunConfig.from_dict({"data": {"noise_kind": "class_conditional", "noise_matrix": str(path)}}).validate()
    assert cfg.identity()["data"]["noise_matrix_sha256"]
    ds = load_dataset(DataConfig(label_noise=0.1))
    ds.extra.clear()
    cfg.data.label_noise = 0.1
    with pytest.raises(DataError, match=r"m\.npy.*\[10, 10\]"):
        apply_label_noise(ds, cfg.data)  # a 3x3 matrix for 10 classes
    with pytest.raises(DataError, match="out of range"):
        apply_label_noise(ds, DataConfig(label_noise=0.1, noise_kind="pairs", noise_pairs=[[1, 12]]))
