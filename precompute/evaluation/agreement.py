"""Method agreement: do two methods rank the training set the same way for the same test point?

For every pair of methods: the mean over test points of the Spearman correlation between their score
rows, and the mean top-k overlap of their proponents (:func:`cache_format.metrics.topk_overlap`,
|top_k(a) & top_k(b)| / k).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cache_format.metrics import pearson_rows, rank_rows, topk_overlap


def agreement(scores: dict[str, np.ndarray], k: int = 10, tests: int = 200, seed: int = 0) -> dict[str, Any]:
    names = list(scores)
    n_test = next(iter(scores.values())).shape[0] if names else 0
    rows = np.arange(n_test)
    if tests < n_test:
        rows = np.sort(np.random.default_rng([seed, 32452843]).choice(n_test, size=tests, replace=False))
    ranks = {m: rank_rows(np.asarray(scores[m][rows], dtype=np.float64)) for m in names}
    top = {m: np.argsort(-np.asarray(scores[m][rows], dtype=np.float64), axis=1, kind="stable")[:, :k] for m in names}
    n = len(names)
    rho = np.eye(n)
    overlap = np.eye(n)
    for a in range(n):
        for b in range(a + 1, n):
            r = float(np.nanmean(pearson_rows(ranks[names[a]], ranks[names[b]])))
            o = float(np.mean([topk_overlap(x, y) for x, y in zip(top[names[a]], top[names[b]], strict=True)]))
            rho[a, b] = rho[b, a] = r
            overlap[a, b] = overlap[b, a] = o
    return {"methods": names, "spearman": rho.tolist(), "topk_overlap": overlap.tolist(), "k": k,
            "n_test": int(len(rows))}
