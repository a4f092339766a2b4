"""``parity.evaluate(engine="ray")`` on a local cluster of 2 CPUs (started once per session):
the same bytes as the local engine, also when a worker dies mid-shard."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("torch")

import parity  # noqa: E402
from tests import evaluate_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
A = "tests.evaluate_models:convnet"
B = "tests.evaluate_models:convnet_eps"
KILLER = "tests.evaluate_models:killing_convnet_eps"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    marker = tmp_path_factory.mktemp("ray-kill") / "killed"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "PARITY_TEST_KILL_MARKER": str(marker)}})
    yield marker
    ray.shutdown()


@pytest.fixture
def one_thread():
    """The local engine with the threads of a Ray worker of one CPU (Ray sets OMP_NUM_THREADS=1):
    a convolution's float32 sums are grouped by thread, so the models themselves give other
    last bits with another thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    x, y = evaluate_models.digits(192, seed=1)
    x[5 * 16, 0, 0, 0] = evaluate_models.SENTINEL  # batch 5 of 16: the second batch of shard 2
    root = tmp_path_factory.mktemp("ray-data")
    np.savez(root / "val.npz", x=x, labels=y)
    return x, y, root / "val.npz"


def test_a_worker_killed_mid_shard_changes_nothing_in_the_result(cluster, data, one_thread):
    _, _, path = data
    assert not cluster.exists()
    on_ray = parity.evaluate(A, KILLER, path, engine="ray", workers=2, batch_size=16, shard_batches=2)
    assert cluster.exists(), "the worker holding shard 2 should have died once"
    assert on_ray.run_info["retries"] == 1 and on_ray.run_info["shards"] == 6
    # the marker now exists: the same model no longer kills, so the local engine can run it
    local = parity.evaluate(A, KILLER, path, batch_size=16)
    assert on_ray.samples == local.samples == 192 and on_ray.batches == 12
    assert on_ray.to_json_text() == local.to_json_text()
    assert on_ray.first_divergence == "layer1.1"


def test_shipped_batches_give_the_local_engines_bytes(cluster, data, one_thread):
    x, y, _ = data
    batches = [(x[i:i + 24], y[i:i + 24]) for i in range(0, 192, 24)]
    on_ray = parity.evaluate(A, B, batches, engine="ray", workers=2, shard_batches=3, layers="outputs")
    local = parity.evaluate(A, B, batches, layers="outputs")
    assert on_ray.to_json_text() == local.to_json_text()
    assert on_ray.output["top1_agreement"] == local.output["top1_agreement"] < 1.0


def test_cli_engine_ray_writes_the_local_engines_json(cluster, data, one_thread, tmp_path, capsys):
    from parity.cli import main

    _, _, path = data
    for engine in ("ray", "local"):
        code = main(["evaluate", A, B, "--data", str(path), "--engine", engine, "--workers", "2", "--layers", "outputs",
                     "--batch-size", "48", "--json", str(tmp_path / engine / "ev.json")])
        assert code == 1
    assert "✗ DIVERGES at output (over the data): 192 samples" in capsys.readouterr().out
    assert (tmp_path / "ray" / "ev.json").read_bytes() == (tmp_path / "local" / "ev.json").read_bytes()
