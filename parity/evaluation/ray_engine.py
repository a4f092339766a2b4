"""``engine="ray"``: the same batches counted by Ray actors, merged on the driver in batch order.

Each actor loads both models once (from the paths or ``package.module:factory`` specs it is
given) and counts whole shards — runs of consecutive batches — into partial statistics.  File
data is read by the actors themselves (the source pickles as its paths); other data is read on
the driver and shipped through the object store, a shard at a time per idle actor, so memory
stays bounded.  A shard whose actor dies is given to a fresh actor; only returned statistics
are merged, each shard once, in shard order: nothing is counted twice or lost.

``RAY_ADDRESS`` connects to an existing cluster; otherwise a local one with two CPUs is
started (its workers import the same ``parity`` as the driver).  Ray is imported here only.
"""

from __future__ import annotations

import os
import time
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import CaptureError, ConverterNotInstalled
from .data import Batch, Source
from .engine import Plan
from .stats import Stats

__all__ = ["run_on_ray", "ensure_ray", "MAX_ATTEMPTS"]

#: a shard is tried this many times (each on a fresh actor after a death) before the run fails
MAX_ATTEMPTS = 3


def ensure_ray() -> Any:
    """Ray, connected: to ``RAY_ADDRESS`` when set, else to a local cluster of 2 CPUs."""
    try:
        import ray
    except ImportError as exc:
        raise ConverterNotInstalled(
            "engine='ray' needs Ray, which is not installed: pip install 'parity[ray]' (ray>=2.9), "
            "or use engine='local'."
        ) from exc
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            here = str(Path(__file__).resolve().parents[2])  # the directory holding this parity package
            path = os.pathsep.join(p for p in (here, os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
            ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    return ray


class _Worker:
    """One Ray actor: both models loaded once, shards counted into partial statistics."""

    def __init__(self, spec_a: Any, spec_b: Any, plan: Plan, trust: bool, base_dir: Any) -> None:
        from ..capture import backend_for
        from ..loading import load_model
        from .engine import Runner

        a, b = load_model(spec_a, base_dir, trust=trust), load_model(spec_b, base_dir, trust=trust)
        self.runner = Runner(backend_for(a), backend_for(b), plan)

    def pid(self) -> int:
        return os.getpid()

    def shard(self, index: int, data: Any, positions: list[int] | None) -> tuple[int, Stats, float]:
        t0 = time.perf_counter()
        batches = [data.batch(k) for k in positions] if positions is not None else data
        total: Stats | None = None
        for b in batches:
            s = self.runner.process(b)
            total = s if total is None else total.merge(s)
        assert total is not None
        return index, total, time.perf_counter() - t0


def _shards(source: Source, batches: Iterator[Batch], start: int, total_batches: int | None,
            size: int) -> Iterator[tuple[int, list[Batch] | None, list[int] | None]]:
    """(shard index, batches to ship or None, batch positions for the worker to read or None)."""
    if source.random_access and getattr(source, "file_backed", False) and total_batches is not None:
        for i, first in enumerate(range(start, total_batches, size)):
            yield i, None, list(range(first, min(first + size, total_batches)))
        return
    i = 0
    while True:
        group = list(islice(batches, size))
        if not group:
            return
        yield i, group, None
        i += 1


def run_on_ray(specs: tuple[Any, Any], plan: Plan, source: Source, batches: Iterator[Batch], total: Stats, *,
               start: int, total_batches: int | None, workers: int, shard_batches: int, trust: bool, base_dir: Any,
               on_merged: Callable[[Stats, int], Any], log: dict[str, Any] | None = None) -> Stats:
    """Count every shard on ``workers`` actors and merge them into ``total`` in shard order."""
    ray = ensure_ray()
    from ray.exceptions import RayActorError

    actor_class = ray.remote(num_cpus=1, max_restarts=0)(_Worker)
    plan_ref = ray.put(plan)

    def new_actor() -> Any:
        return actor_class.remote(specs[0], specs[1], plan_ref, trust, base_dir)

    actors = [new_actor() for _ in range(workers)]
    idle = list(actors)
    source_ref = ray.put(source) if source.random_access and getattr(source, "file_backed", False) else None
    todo = _shards(source, batches, start, total_batches, shard_batches)
    pending: dict[Any, tuple[int, Any, Any, list[int] | None]] = {}
    attempts: dict[int, int] = {}
    finished: dict[int, Stats] = {}
    next_merge = 0
    exhausted = False
    retries = 0
    seconds: list[float] = []

    def submit(actor: Any, index: int, data: Any, positions: list[int] | None) -> None:
        attempts[index] = attempts.get(index, 0) + 1
        pending[actor.shard.remote(index, data, positions)] = (index, data, actor, positions)

    try:
        while True:
            while idle and not exhausted:
                item = next(todo, None)
                if item is None:
                    exhausted = True
                    break
                index, group, positions = item
                submit(idle.pop(), index, source_ref if group is None else ray.put(group), positions)
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            future = ready[0]
            index, data, actor, positions = pending.pop(future)
            try:
                got_index, stats, took = ray.get(future)
            except RayActorError as exc:
                # the worker died mid-shard: its partial statistics never reached us; a fresh actor
                # counts the whole shard again
                retries += 1
                if attempts[index] >= MAX_ATTEMPTS:
                    raise CaptureError(
                        f"shard {index} (batches from {start + index * shard_batches}) killed its Ray worker "
                        f"{attempts[index]} times; the last error: {exc}. Run it with engine='local' to see why."
                    ) from exc
                actors.remove(actor)
                replacement = new_actor()
                actors.append(replacement)
                submit(replacement, index, data, positions)
                continue
            assert got_index == index
            seconds.append(took)
            finished[index] = stats
            idle.append(actor)
            while next_merge in finished:
                total.merge(finished.pop(next_merge))
                next_merge += 1
                on_merged(total, total.batches)
    finally:
        for actor in actors:
            ray.kill(actor)
    if log is not None:
        log.update({"retries": retries, "shards": next_merge, "shard_seconds": seconds})
    return total
