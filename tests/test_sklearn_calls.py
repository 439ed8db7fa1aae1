"""lean_sklearn: the clustering defenses' scikit-learn calls give the labels of plain calls."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans

from byzbench.defenses.sklearn_calls import lean_sklearn


def _cases(count: int):
    rng = np.random.default_rng(7)
    for _ in range(count):
        m = int(rng.integers(3, 40))
        k = int(rng.integers(1, 4))
        centres = rng.normal(scale=3.0, size=(k, 8))
        points = centres[rng.integers(0, k, m)] + rng.normal(scale=rng.uniform(0.1, 2), size=(m, 8))
        dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
        yield m, points, dist


def _labels(points: np.ndarray, dist: np.ndarray, m: int) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [KMeans(n_clusters=2, n_init=10, random_state=3).fit(points).labels_,
                AgglomerativeClustering(n_clusters=2, metric="precomputed",
                                        linkage="average").fit_predict(dist),
                HDBSCAN(min_cluster_size=m // 2 + 1, min_samples=1, metric="precomputed",
                        allow_single_cluster=True, copy=True).fit_predict(dist)]


@pytest.mark.parametrize("threads", [1, 2])
def test_labels_equal_plain_calls(threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for m, points, dist in _cases(40):
            plain = _labels(points, dist, m)
            with lean_sklearn():
                lean = _labels(points, dist, m)
            for a, b in zip(plain, lean):
                np.testing.assert_array_equal(a, b)
    finally:
        torch.set_num_threads(before)


def test_context_is_scoped_and_still_rejects_nonfinite() -> None:
    with lean_sklearn():
        assert sklearn.get_config()["skip_parameter_validation"] is True
        bad = np.array([[0.0, 1.0], [np.inf, 0.0], [1.0, 1.0]])
        with pytest.raises(ValueError, match="infinity|NaN|finite"):
            KMeans(n_clusters=2, n_init=1).fit(bad)
    assert sklearn.get_config()["skip_parameter_validation"] is False
