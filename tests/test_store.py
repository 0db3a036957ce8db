"""The chunked gradient store (resume, damage, refusal) and tiled scoring (any tiling, same arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.cache.scores import ScoreWriter, select_topk
from precompute.errors import CacheError
from precompute.store import GradientStore, StoreSpec


def _matrix(n: int = 53, k: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32)


def test_store_resumes_only_missing_chunks_and_reads_back(tmp_path):
    full = _matrix()
    spec = StoreSpec(n=53, k=7, dtype="float32", chunk_rows=10, fingerprint="f")
    store = GradientStore(tmp_path / "s", spec)
    calls: list[tuple[int, int]] = []

    def compute(a: int, b: int) -> np.ndarray:
        calls.append((a, b))
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted during the third chunk
        return full[a:b]

    with pytest.raises(KeyboardInterrupt):
        store.fill(compute)
    assert GradientStore(tmp_path / "s", spec).missing() == [2, 3, 4, 5]
    calls.clear()
    done = GradientStore(tmp_path / "s", spec).fill(lambda a, b: (calls.append((a, b)), full[a:b])[1])
    assert done == [2, 3, 4, 5] and calls[0] == (20, 30) and calls[-1] == (50, 53)
    np.testing.assert_array_equal(GradientStore(tmp_path / "s", spec).read(), full)


def test_a_damaged_or_unrecorded_chunk_is_recomputed(tmp_path):
    full = _matrix()
    spec = StoreSpec(n=53, k=7, dtype="float32", chunk_rows=10, fingerprint="f")
    store = GradientStore(tmp_path / "s", spec)
    store.fill(lambda a, b: full[a:b])
    data = tmp_path / "s" / "chunk_00001.npy"
    data.write_bytes(data.read_bytes()[:-8])  # truncated after its record was written
    (tmp_path / "s" / "chunk_00003.done.json").unlink()  # killed between the file and its record
    assert store.missing() == [1, 3]
    first = tmp_path / "s" / "chunk_00000.npy"
    raw = bytearray(first.read_bytes())
    raw[-1] ^= 0xFF  # same size, other bytes (bit rot): only the full check sees it
    first.write_bytes(bytes(raw))
    assert 0 not in store.missing() and store.missing(verify=True) == [0, 1, 3]


def test_a_store_for_another_spec_is_refused(tmp_path):
    GradientStore(tmp_path / "s", StoreSpec(n=53, k=7, dtype="float32", chunk_rows=10, fingerprint="f"))
    with pytest.raises(CacheError, match="another configuration"):
        GradientStore(tmp_path / "s", StoreSpec(n=53, k=7, dtype="float32", chunk_rows=10, fingerprint="g"))
    with pytest.raises(CacheError, match="dtype"):
        StoreSpec(n=1, k=1, dtype="int8", chunk_rows=1, fingerprint="f")


def test_non_finite_chunks_are_refused(tmp_path):
    store = GradientStore(tmp_path / "s", StoreSpec(n=2, k=2, dtype="float16", chunk_rows=2, fingerprint="f"))
    with pytest.raises(FloatingPointError, match="float32"):
        store.write_chunk(0, np.array([[1e6, 0.0], [0.0, 1.0]]))  # overflows float16


def _brute(values: np.ndarray, k: int, largest: bool) -> np.ndarray:
    keys = values if largest else -values
    return np.array([sorted(range(len(r)), key=lambda j: (-r[j], j))[:k] for r in keys])


def test_select_topk_is_a_total_order_with_ties():
    v = np.random.default_rng(1).integers(0, 4, size=(30, 25)).astype(np.float64)  # many ties
    ids = np.broadcast_to(np.arange(25), v.shape)
    np.testing.assert_array_equal(select_topk(v, ids, 6), _brute(v, 6, True))
    np.testing.assert_array_equal(select_topk(-v, ids, 6), _brute(v, 6, False))


class _Sink:
    """A stand-in CacheWriter that keeps arrays in memory."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.arrays: dict[str, np.ndarray] = {}

    def open_array(self, name, shape, dtype, method):
        self.arrays[name] = np.lib.format.open_memmap(self.tmp / f"{name}.npy", "w+", dtype, shape)
        return self.arrays[name]

    def save_array(self, name, arr, method):
        self.arrays[name] = np.array(arr)


def _write(scores: np.ndarray, tiles: list[tuple[int, int, int, int]], dense: bool, tmp) -> dict[str, np.ndarray]:
    sink = _Sink(tmp)
    sw = ScoreWriter(sink, "m", *scores.shape, topk=5, dense=dense)
    for r0, r1, c0, c1 in tiles:
        sw.write_tile(r0, c0, scores[r0:r1, c0:c1])
    sw.close(np.zeros(scores.shape[1]))
    return sink.arrays


def test_any_tiling_gives_the_same_arrays_and_topk_only_skips_the_matrix(tmp_path):
    s = np.random.default_rng(2).integers(-3, 4, size=(17, 23)).astype(np.float32)  # ties everywhere
    rows_only = _write(s, [(r, min(r + 4, 17), 0, 23) for r in range(0, 17, 4)], dense=True, tmp=tmp_path)
    rng = np.random.default_rng(3)
    tiles = [(r, min(r + 5, 17), c, min(c + 6, 23)) for r in range(0, 17, 5) for c in range(0, 23, 6)]
    tiles = [tiles[i] for i in rng.permutation(len(tiles))]
    tiled = _write(s, tiles, dense=False, tmp=tmp_path)
    assert "scores" not in tiled
    np.testing.assert_array_equal(rows_only["scores"], s)
    for name, arr in tiled.items():
        np.testing.assert_array_equal(arr, rows_only[name], err_msg=name)
    np.testing.assert_array_equal(tiled["top_proponents"], _brute(s, 5, True))
    np.testing.assert_array_equal(tiled["train_top_hurt"], _brute(s.T, 5, False))
    np.testing.assert_allclose(tiled["train_net_influence"], s.mean(0), rtol=1e-6)


def test_a_tile_scored_twice_or_never_is_an_error(tmp_path):
    s = np.ones((3, 4), np.float32)
    with pytest.raises(RuntimeError, match="exactly once"):
        _write(s, [(0, 3, 0, 2)], dense=False, tmp=tmp_path)
    with pytest.raises(RuntimeError, match="exactly once"):
        _write(s, [(0, 3, 0, 4), (0, 3, 2, 4)], dense=False, tmp=tmp_path)


REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
RSS_PROBE = """
import sys, numpy as np
from precompute.cache import CacheWriter, ScoreWriter
from precompute.store.budget import peak_rss_mb, reset_peak_rss
n_test, n_train = 1000, 50_000  # a 200 MB float32 matrix
w = CacheWriter(sys.argv[1])
sink = ScoreWriter(w, "graddot", n_test, n_train, 10, dense=sys.argv[2] == "dense")
rng = np.random.default_rng(0)
tile = rng.normal(size=(250, 10_000)).astype(np.float32)
reset_peak_rss()
base = peak_rss_mb()
for r in range(0, n_test, 250):
    for c in range(0, n_train, 10_000):
        sink.write_tile(r, c, tile)
sink.close(np.zeros(n_train))
print(peak_rss_mb() - base)
"""


def test_writing_a_dense_score_matrix_does_not_keep_it_resident(tmp_path):
    """The dense memmap's pages are released as tiles are written: a matrix larger than the release
    threshold never sits whole in the process's resident set (measured in a fresh process)."""
    import subprocess
    import sys

    def grew_mb(mode: str) -> float:
        proc = subprocess.run([sys.executable, "-c", RSS_PROBE, str(tmp_path / mode), mode], capture_output=True,
                              text=True, timeout=300, cwd=str(REPO))
        assert proc.returncode == 0, proc.stderr
        return float(proc.stdout.strip().splitlines()[-1])

    extra = grew_mb("dense") - grew_mb("topk")  # the top-k folding's own temporaries cancel out
    assert extra < 120, extra  # 200 MB of scores written; pages are released every 64 MB


def test_a_big_store_is_cut_into_many_chunks_whatever_the_process_count():
    """Many chunks let torchrun ranks share a store evenly (and a resume redo little); the rule has no
    world-size input, so a run resumed with another number of processes finds the same chunks."""
    from precompute.store.gradient_store import MIN_CHUNK_ROWS, MIN_CHUNKS, chunk_rows_for

    budget = (3 << 30) // 8
    rows = chunk_rows_for(4046, "float32", budget, 20_000)
    assert rows == MIN_CHUNK_ROWS and -(-20_000 // rows) >= 16
    assert -(-1_000_000 // chunk_rows_for(4046, "float32", budget, 1_000_000)) >= MIN_CHUNKS
    assert chunk_rows_for(650, "float32", budget, 1437) == MIN_CHUNK_ROWS  # a small store: few, big chunks
    assert chunk_rows_for(4046, "float32", 1 << 20, 20_000) == (1 << 20) // (4046 * 12)  # the budget still caps
