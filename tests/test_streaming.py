"""Bounded memory: ``max_memory`` spills a finished side's activations to memory-mapped files,
and the report does not change."""

from __future__ import annotations

import os

import numpy as np
import pytest

import parity
from parity import spill as spill_mod
from parity.errors import InputError, ParityError
from parity.spill import Spill, default_max_memory, parse_max_memory, release, trace_nbytes

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from parity._zoo import ConvNet, randomize_bn, to_keras  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    """A hand-converted ConvNet with a wrong BatchNorm epsilon: flagged layers with details and
    diagnoses, and B's tensors compared through a transpose."""
    torch.manual_seed(0)
    tm = randomize_bn(ConvNet().eval(), seed=1)
    return tm, to_keras(tm, bn_epsilon=1e-1, flatten="permute")


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).uniform(0, 1, (16, 1, 28, 28)).astype("float32")


@pytest.fixture
def spied(monkeypatch):
    """Every value may be spilled (none is too small); count what is written and where."""
    monkeypatch.setattr(spill_mod, "_SMALL", 0)
    seen: dict = {"writes": 0, "dirs": set()}
    real = Spill._write

    def write(self, value):
        out = real(self, value)
        seen["writes"] += 1
        seen["dirs"].add(self._dir)
        return out

    monkeypatch.setattr(Spill, "_write", write)
    return seen


def test_spilling_both_sides_leaves_the_report_identical(pair, batch, spied):
    tm, km = pair
    in_memory = parity.diff(tm, km, batch)
    assert spied["writes"] == 0  # the default budget (a quarter of RAM) holds this pair easily
    spilled = parity.diff(tm, km, batch, max_memory=1)
    n_taps = len(parity.capture(tm, batch).taps) + len(parity.capture(km, np.ascontiguousarray(batch.transpose(0, 2, 3, 1))).taps)
    assert spied["writes"] == n_taps  # a budget of one byte: every recorded value went to disk
    assert not in_memory.ok and in_memory.first_divergence is not None
    assert any(d.detail is not None for d in spilled.layers)
    assert spilled.to_dict() == in_memory.to_dict()
    # the temporary directory is gone once the report is made
    assert spied["dirs"] and all(not d.exists() for d in spied["dirs"])


def test_a_budget_that_holds_one_side_but_not_both_spills_the_second_only(pair, batch, spied):
    tm, km = pair
    size_a = trace_nbytes(parity.capture(tm, batch))
    size_b = trace_nbytes(parity.capture(km, np.ascontiguousarray(batch.transpose(0, 2, 3, 1))))
    spilled = parity.diff(tm, km, batch, max_memory=f"{size_a + size_b - 1}B")
    assert spied["writes"] == 1  # B's last value no longer fit; everything before it stayed in memory
    relaxed = parity.diff(tm, km, batch, max_memory=size_a + size_b)
    assert spied["writes"] == 1  # exactly at the budget: nothing more spilled
    assert spilled.to_dict() == relaxed.to_dict()


def test_a_capture_past_its_budget_writes_values_to_disk_as_the_model_runs(pair, batch, monkeypatch):
    # torch's recorded values are views of the model's own tensors: spilled as recorded, the
    # tensor can be freed as soon as the model is done with it, and the value is still right
    tm, _ = pair
    monkeypatch.setattr(spill_mod, "_SMALL", 0)
    plain = parity.capture(tm, batch)
    with Spill() as spill:
        with spill.capturing(plain.taps[0].value.nbytes):  # room for the first value only
            spilled = parity.capture(tm, batch)
        kinds = [isinstance(t.value, np.memmap) for t in spilled.taps]
        assert kinds[0] is False and all(kinds[1:])
        for a, b in zip(plain.taps, spilled.taps):
            np.testing.assert_array_equal(np.asarray(b.value), a.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [(2_000_000_000, 2_000_000_000), ("2GB", 2_000_000_000), ("512MiB", 512 * 2**20), (" 1.5 gb ", 1_500_000_000),
     ("1e9", 1_000_000_000), ("300", 300), (0, 0)],
)
def test_max_memory_accepts_bytes_and_sizes(given, expected):
    assert parse_max_memory(given) == expected


@pytest.mark.parametrize("bad", ["2 parsecs", "-1GB", "", True, -5, [1]])
def test_max_memory_refuses_what_is_not_a_size(bad):
    with pytest.raises(InputError, match=r"max_memory must be a number of bytes or a size such as '2GB'") as info:
        parse_max_memory(bad)
    assert isinstance(info.value, ParityError) and repr(bad) in str(info.value)


def test_bad_max_memory_is_refused_before_any_model_runs(pair, batch):
    tm, km = pair
    with pytest.raises(InputError, match="got '2 parsecs'"):
        parity.diff(tm, km, batch, max_memory="2 parsecs")


def test_default_budget_is_a_quarter_of_physical_memory():
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_max_memory() == int(ram * 0.25)
    assert parse_max_memory(None) == default_max_memory()


def test_spilled_values_read_back_equal_and_release_keeps_them_readable(tmp_path):
    from parity.capture.base import append_tap
    from parity.records import ModelInfo, Trace

    values = [np.arange(40_000, dtype=np.float32).reshape(4, 100, 100), np.ones(3, np.float32)]
    with Spill() as sp:
        taps: list = []
        with sp.capturing(0):  # a budget of nothing: every value big enough to be worth a file is spilled
            for i, v in enumerate(values):
                append_tap(taps, f"t{i}", "x", v, None)
        out = Trace(taps=tuple(taps), model=ModelInfo(framework="torch", framework_version="0", name="m", kind="k"))
        big, small = out.taps[0].value, out.taps[1].value
        assert isinstance(big, np.memmap) and not isinstance(small, np.memmap)  # 12 bytes stay in memory
        assert trace_nbytes(out) == small.nbytes
        release(big)
        release(big.transpose(0, 2, 1))  # views of a map too
        np.testing.assert_array_equal(big, values[0])
        where = sp._dir
        assert where is not None and (where / "0.npy").exists()
    assert not where.exists()
    np.testing.assert_array_equal(big, values[0])  # still mapped after the file is gone
