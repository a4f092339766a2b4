"""The statistics of ``parity.evaluate`` on their own (NumPy only): exact merges, the McNemar
test, the paired interval, histogram percentiles, and the data readers' refusals."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parity.errors import DataError, LabelsError, ModelNotShippable, OptionError
from parity.evaluation.data import ArraySource, as_source
from parity.evaluation.exact import ExactSum
from parity.evaluation.result import Evaluation
from parity.evaluation.stats import (
    HIST_EDGES, LayerStats, OutputStats, Stats, WorstKeeper, histogram_percentile, mcnemar_exact,
    paired_difference_interval,
)

INFO = {"name": "M", "framework": "test"}


def _shard(seed: int, start: int, n: int = 16) -> Stats:
    """The statistics of one shard of made-up tensors whose errors span many orders of magnitude
    (so that float sums in another order would round differently)."""
    rng = np.random.default_rng(seed)
    layer = LayerStats("conv", "conv_b", "Conv2d", "Conv2D", "layer", "identity", 1e-3, 1e-5)
    out_layer = LayerStats("output", "output", "output", "output", "output", "identity", 1e-3, 1e-5)
    out = OutputStats("output", 10, 5)
    a = rng.normal(size=(n, 4, 5)) * 10.0 ** rng.integers(-6, 6, (n, 1, 1))
    b = a + rng.normal(size=a.shape) * 10.0 ** rng.integers(-9, 0, (n, 1, 1))
    layer.add(a, b, start)
    la = rng.normal(size=(n, 10))
    lb = la + rng.normal(size=la.shape) * 0.3
    rel = out_layer.add(la, lb, start)
    labels = rng.integers(0, 10, n)
    top_a, top_b, dis = out.add(la, lb, labels)
    keeper = WorstKeeper(4, 8)
    from parity.evaluation.stats import Sample

    keeper.offer([Sample(start + i, float(rel[i]), int(top_a[i]), int(top_b[i]), int(labels[i])) for i in range(n)])
    return Stats([layer, out_layer], [out], keeper, samples=n, batches=1)


def _json(stats: Stats) -> str:
    ev = Evaluation.build(stats, model_a=INFO, model_b=INFO, data="made-up", batch_size=16, layers_mode="all",
                          tolerance="defaults")
    return ev.to_json_text()


def test_merging_shards_in_any_grouping_gives_byte_identical_json():
    shards = lambda: [_shard(seed, 16 * seed) for seed in range(6)]  # noqa: E731
    left = shards()
    total = left[0]
    for s in left[1:]:
        total = total.merge(s)  # ((s0 + s1) + s2) + …
    right = shards()
    tail = right[-1]
    for s in reversed(right[1:-1]):
        tail = s.merge(tail)  # s0 + (s1 + (… + s5))
    paired = shards()
    halves = [paired[0].merge(paired[1]).merge(paired[2]), paired[3].merge(paired[4].merge(paired[5]))]
    assert _json(total) == _json(right[0].merge(tail)) == _json(halves[0].merge(halves[1]))


def test_exact_sums_do_not_depend_on_grouping_where_float_sums_do():
    values = [1e16, 1.0, 1.0, -1e16]
    assert ((values[0] + values[1]) + values[2]) + values[3] == 0.0  # each 1.0 rounds away
    assert values[0] + (values[1] + values[2]) + values[3] == 2.0
    one, two = ExactSum(), ExactSum()
    one.add(np.array(values[:2]))
    two.add(np.array(values[2:]))
    one.merge(two)
    three, four = ExactSum(), ExactSum()
    three.add(np.array([values[0], values[3]]))
    four.add(np.array(values[1:3]))
    four.merge(three)
    assert one.value == four.value == 2.0


def test_merged_counts_are_the_sums_of_the_shards():
    shards = [_shard(seed, 16 * seed) for seed in range(3)]
    expected_over = sum(s.layers[0].over for s in shards)
    expected_agree = sum(s.outputs[0].top1_agree for s in shards)
    worst = sorted((w for s in shards for w in s.keeper.worst), key=lambda w: (-w.error, w.index))[:4]
    total = shards[0].merge(shards[1]).merge(shards[2])
    assert total.layers[0].over == expected_over and total.outputs[0].top1_agree == expected_agree
    assert [w.index for w in total.keeper.worst] == [w.index for w in worst]
    assert total.samples == 48


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(min_value=-1e300, max_value=1e300, allow_nan=False), min_size=1, max_size=30),
       st.integers(min_value=0, max_value=30))
def test_exact_sums_are_associative(values, cut):
    cut = min(cut, len(values))
    whole, left, right = ExactSum(), ExactSum(), ExactSum()
    whole.add(np.asarray(values))
    left.add(np.asarray(values[:cut]))
    right.add(np.asarray(values[cut:]))
    right.merge(left)
    assert right.units == whole.units
    assert whole.value == math.fsum(values)


def test_exact_sum_survives_a_checkpoint():
    s = ExactSum()
    s.add(np.array([1e-300, 1.0, -1e300, 1e300]))
    assert ExactSum.from_state(s.state()).value == s.value == 1.0


def test_mcnemar_matches_a_hand_computed_binomial():
    # 1 vs 9 discordant pairs: p = 2·(C(10,0) + C(10,1)) / 2**10 = 22/1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    # 3 vs 3: the whole distribution on both tails → capped at 1
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # 0 vs 12: 2 / 2**12
    assert mcnemar_exact(0, 12) == pytest.approx(2 / 4096, rel=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in ((4, 17), (30, 45), (0, 5)):
        assert mcnemar_exact(b, c) == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_paired_interval_by_hand():
    # n = 100, A right only on 2, B right only on 8: d = 0.06, var = (10 − 36/100)/100² → half-width 1.96·0.031048
    low, high = paired_difference_interval(2, 8, 100)
    half = 1.959963984540054 * math.sqrt((10 - 0.36) / 100 ** 2)
    assert (low, high) == pytest.approx((0.06 - half, 0.06 + half))
    assert paired_difference_interval(0, 0, 50) == (0.0, 0.0)


def test_histogram_percentiles_within_a_bin_of_numpys():
    rng = np.random.default_rng(0)
    rel = 10.0 ** rng.normal(-4, 1.5, 5000)
    layer = LayerStats("l", "l", "op", "op", "layer", "identity", 1e-3, 1e-5)
    # a tensor per sample whose relative error is exactly rel: a = e1, b = e1 + rel·e2
    a = np.zeros((5000, 2))
    a[:, 0] = 1.0
    b = a.copy()
    b[:, 1] = rel
    got = layer.add(a, b, 0)
    np.testing.assert_allclose(got, rel, rtol=1e-12)
    edges = np.asarray(HIST_EDGES)
    for q in (0.5, 0.99):
        ours = histogram_percentile(layer.hist, q, layer.max_rel)
        theirs = np.percentile(rel, 100 * q)
        assert abs(int(np.searchsorted(edges, ours, "right")) - int(np.searchsorted(edges, theirs, "right"))) <= 1
    assert layer.summary()["max_rel_err"] == pytest.approx(rel.max())
    assert layer.summary()["max_rel_err_sample"] == int(np.argmax(rel))


def test_over_tolerance_counts_samples_as_diff_judges_a_layer():
    layer = LayerStats("l", "l", "op", "op", "layer", "identity", 1e-3, 0.0)
    a = np.ones((4, 10))
    b = a * np.array([1.0, 1.0005, 1.002, 1.1])[:, None]  # relative errors 0, 5e-4, 2e-3, 0.1
    layer.add(a, b, 10)
    s = layer.summary()
    assert s["over_tolerance"] == 2 and s["over_tolerance_share"] == 0.5
    assert s["max_abs_sample"] == 13 and s["max_abs"] == pytest.approx(0.1)
    assert not s["ok"]


def test_nan_in_a_model_output_is_counted_and_fails_the_layer():
    layer = LayerStats("l", "l", "op", "op", "layer", "identity", 1e-3, 1e-5)
    a = np.ones((3, 4))
    b = a.copy()
    b[1, 2] = np.nan
    layer.add(a, b, 0)
    s = layer.summary()
    assert s["nonfinite_samples"] == 1 and s["max_rel_err"] == "inf" and s["max_rel_err_sample"] == 1
    assert not s["ok"]


# --- data readers --------------------------------------------------------------------------


def test_npz_members_are_memory_mapped_not_read(tmp_path):
    x = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(6))
    src = as_source(tmp_path / "d.npz", batch_size=4)
    assert isinstance(src, ArraySource)
    assert isinstance(src.columns[0].arrays()[0], np.memmap) and isinstance(src.labels.arrays()[0], np.memmap)
    b = src.batch(1)
    np.testing.assert_array_equal(b.inputs[0], x[4:])
    assert b.start == 4 and list(b.labels) == [4, 5]


def test_a_directory_of_npy_chunks_reads_across_chunk_edges(tmp_path):
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    np.save(tmp_path / "000.npy", x[:3])
    np.save(tmp_path / "001.npy", x[3:])
    np.save(tmp_path / "labels.npy", np.arange(10) % 3)
    src = as_source(tmp_path, batch_size=4)
    got = np.concatenate([b.inputs[0] for b in src.batches()])
    np.testing.assert_array_equal(got, x)
    assert [len(b.labels) for b in src.batches()] == [4, 4, 2]


def test_compressed_npz_is_refused_with_what_to_do(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", x=np.zeros((4, 3), np.float32))
    with zipfile.ZipFile(tmp_path / "c.npz") as zf:
        assert zf.infolist()[0].compress_type != zipfile.ZIP_STORED
    with pytest.raises(DataError, match=r"compressed .*cannot be memory-mapped.*np\.savez \(uncompressed\)"):
        as_source(tmp_path / "c.npz").batch(0)


def test_data_refusals_say_what_came_and_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"data '.*missing\.npy' does not exist; give a \.npy/\.npz file"):
        as_source(tmp_path / "missing.npy")
    with pytest.raises(DataError, match=r"data is a builtins\.int; expected an array, a dict of arrays"):
        as_source(3)
    with pytest.raises(LabelsError, match=r"labels holds 5 labels for 6 samples of an array of shape \(6, 3\)"):
        as_source(np.zeros((6, 3), np.float32), labels=np.arange(5))
    with pytest.raises(LabelsError, match=r"dtype float64; expected integer class ids.*astype\('int64'\)"):
        as_source(np.zeros((6, 3), np.float32), labels=np.zeros(6))
    with pytest.raises(LabelsError, match=r"carries labels already, and labels= gives them again"):
        as_source((np.zeros((6, 3), np.float32), np.arange(6)), labels=np.arange(6))
    with pytest.raises(DataError, match=r"different numbers of samples \('a': 4, 'b': 3\)"):
        as_source({"a": np.zeros((4, 2)), "b": np.zeros((3, 2))})
    batches = [np.zeros((4, 3)), (np.zeros((4, 3)), np.arange(3))]
    with pytest.raises(LabelsError, match=r"batch 1 of a list of 2 batches holds 3 labels for 4 samples"):
        list(as_source(batches).batches())


def test_a_live_model_cannot_go_to_ray_workers_and_the_message_says_what_to_pass():
    import parity

    with pytest.raises(ModelNotShippable, match=r"model A is a live builtins\.object.*pass a saved model's path.*"
                                                r"'package\.module:factory'.*engine='local'"):
        parity.evaluate(object(), "b.onnx", np.zeros((2, 3), np.float32), engine="ray")
    with pytest.raises(OptionError, match=r"engine must be one of local, ray, got 'spark'"):
        parity.evaluate(object(), object(), np.zeros((2, 3), np.float32), engine="spark")


def test_importing_parity_evaluate_imports_no_framework_and_no_ray():
    import subprocess
    import sys

    code = ("import sys, parity, parity.evaluation.ray_engine, parity.evaluation.cli; parity.evaluate; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_single_samples_are_refused_with_how_to_batch_them():
    samples = [(np.zeros((1, 28, 28), np.float32), np.int64(3))]
    with pytest.raises(DataError, match=r"batch 0 of a list of 1 batches is \(x, y\) with a single label.*"
                                        r"dataset\.batch\(32\)"):
        list(as_source(samples).batches())


def test_pair_tables_take_a_dataset_and_refuse_its_keys_without_one(tmp_path):
    from parity.errors import PairConfigError
    from parity.pairs import load_pairs

    cfg = tmp_path / "parity.toml"
    cfg.write_text('[pairs.v]\na = "m:a"\nb = "m:b"\ndata = "val.npz"\nlabels = "y.npy"\nmin_agreement = 0.99\n'
                   'max_accuracy_drop = 0.01\nlayers = "outputs"\nbatch_size = 64\n')
    (pair,) = load_pairs(cfg)
    assert pair.data == "val.npz"
    assert dict(pair.evaluate_options) == {"labels": "y.npy", "min_agreement": 0.99, "max_accuracy_drop": 0.01,
                                           "layers": "outputs", "batch_size": 64}
    cfg.write_text('[pairs.v]\na = "m:a"\nb = "m:b"\nmin_agreement = 0.99\n')
    with pytest.raises(PairConfigError, match=r"\[pairs\.v\] gives min_agreement without 'data'"):
        load_pairs(cfg)
    cfg.write_text('[pairs.v]\na = "m:a"\nb = "m:b"\ndata = "val.npz"\nmax_accuracy_drop = 5\n')
    with pytest.raises(PairConfigError, match=r"key 'max_accuracy_drop' must be a fraction in \[0, 1\], got 5"):
        load_pairs(cfg)


def test_a_sample_whose_sums_overflow_is_counted_as_non_finite_not_summed():
    layer = LayerStats("l", "l", "op", "op", "layer", "identity", 1e-3, 1e-5)
    a = np.array([[1.0, 2.0], [1e200, 1e200]])
    layer.add(a, a * 1.5, 0)
    s = layer.summary()
    assert s["nonfinite_samples"] == 1 and s["samples"] == 2 and not s["ok"]
    assert s["mean_rel_err"] == pytest.approx(0.5)  # the finite sample alone


def _rss_file_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("RssFile:")), None)
    except OSError:
        return None


def test_reading_a_memory_mapped_file_does_not_keep_it_resident(tmp_path):
    if _rss_file_kib() is None:
        pytest.skip("needs /proc/self/status (Linux)")
    x = np.random.default_rng(0).random((4096, 2048), dtype=np.float32)  # 32 MiB
    np.save(tmp_path / "x.npy", x)
    del x
    src = as_source(tmp_path / "x.npy", batch_size=128)
    before = _rss_file_kib()
    total = 0.0
    for b in src.batches():
        total += float(b.inputs[0][:, 0].sum())
    grown = _rss_file_kib() - before
    assert grown < 8 * 1024, f"{grown} KiB of the 32 MiB file stayed resident"
    assert total > 0
