"""Every file and folder name of the on-disk cache, and the format versions (see docs/cache-format.md).

One directory per run::

    <cache-dir>/<run>/manifest.json                 written last: its presence marks a complete run
    <cache-dir>/<run>/samples.parquet               one row per sample (train rows first, then test)
    <cache-dir>/<run>/arrays/<name>.npy             images, probabilities, features, embedding
    <cache-dir>/<run>/methods/<method>/<name>.npy   scores [n_test, n_train], top-k, self-influence
    <cache-dir>/<run>/mislabels/...                 suspected-mislabel rankings (cache_format.mislabels)
    <cache-dir>/<run>/evaluation/...                trust evaluation (cache_format.evaluation)

The writer (precompute) and every reader (explorer, evaluate) import these names, so they cannot drift.
"""

from __future__ import annotations

#: version 2: a method may store top-k only (manifest ``methods.<m>.scores = "topk"``, no scores.npy)
FORMAT_VERSION = 2
#: versions this reader opens (version 1 runs always have dense scores)
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SAMPLES = "samples.parquet"
ARRAYS_DIR = "arrays"
METHODS_DIR = "methods"
SIGN_CONVENTION = "positive score = proponent: up-weighting the training sample lowers the test loss"

# arrays/<name>.npy
TRAIN_IMAGES, TEST_IMAGES = "train_images", "test_images"  # uint8 [n, H, W] or [n, H, W, 3]
TRAIN_PROBS, TEST_PROBS = "train_probs", "test_probs"  # float32 [n, n_classes]
TRAIN_FEATURES, TEST_FEATURES = "train_features", "test_features"  # float32 [n, d] penultimate layer
EMBEDDING = "embedding"  # float32 [n_train + n_test, 2] UMAP, train rows first

# methods/<method>/<name>.npy
SCORES = "scores"  # float32 [n_test, n_train]
TOP_PROPONENTS, TOP_PROPONENT_SCORES = "top_proponents", "top_proponent_scores"  # [n_test, k] best first
TOP_OPPONENTS, TOP_OPPONENT_SCORES = "top_opponents", "top_opponent_scores"  # [n_test, k] most negative first
SELF_INFLUENCE = "self_influence"  # float32 [n_train]
TRAIN_NET_INFLUENCE = "train_net_influence"  # float32 [n_train] mean score over the test set
TRAIN_TOP_HELPED, TRAIN_TOP_HELPED_SCORES = "train_top_helped", "train_top_helped_scores"  # [n_train, k] test ids
TRAIN_TOP_HURT, TRAIN_TOP_HURT_SCORES = "train_top_hurt", "train_top_hurt_scores"  # [n_train, k] test ids
# methods/<method>/<name>.npy toward the *predicted* label, misclassified test points only (absent in
# older runs and for methods that cannot score another label; readers: cache_format.predicted)
PREDICTED_ROWS, PREDICTED_LABELS = "predicted_rows", "predicted_labels"  # int32 [n_mis] test ids / labels
PREDICTED_PROPONENTS = "predicted_proponents"  # int32 [n_mis, k] train ids, highest score first
PREDICTED_PROPONENT_SCORES = "predicted_proponent_scores"  # float32 [n_mis, k]
PREDICTED_OPPONENTS = "predicted_opponents"  # int32 [n_mis, k] train ids, most negative first
PREDICTED_OPPONENT_SCORES = "predicted_opponent_scores"  # float32 [n_mis, k]
#: a presenter's tour of striking examples, chosen by precompute (reader: cache_format.tour)
TOUR = "arrays/tour.json"
TOUR_FORMAT = 1

# evaluation/ (written by ``influence-explorer evaluate``)
EVALUATION_DIR = "evaluation"
GROUNDTRUTH_DIR = "groundtruth"
RESULTS = "results.json"
RESULTS_FORMAT = 1

# mislabels/ (written by precompute's mislabels stage)
MISLABELS_DIR = "mislabels"
MISLABEL_SCORES = "mislabels/scores.parquet"
OOF_PROBS = "mislabels/oof_probs.npy"
PROPONENTS, PROPONENT_SCORES = "mislabels/proponents.npy", "mislabels/proponent_scores.npy"
OPPONENTS, OPPONENT_SCORES = "mislabels/opponents.npy", "mislabels/opponent_scores.npy"
MISLABELS_KEY = "mislabels"  # the manifest's section
#: ranking-method prefix for self-influence of an influence method (``self_influence:exact``)
SELF_PREFIX = "self_influence:"


def is_safe_name(name: object) -> bool:
    """Whether ``name`` may be used as one path component of the cache (a run or method folder):
    letters, digits, ``-``, ``_`` and ``.``, not starting with a dot, at most 128 characters."""
    return (isinstance(name, str) and 0 < len(name) <= 128 and not name.startswith(".")
            and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name))
