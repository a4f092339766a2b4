"""Hypothesis properties that run in two tiers: a few examples in the fast tier, many in the slow.

A property is written once, with :func:`prop`, in the test file of what it covers; that file's
test runs ``fast`` examples.  ``tests/test_properties_deep.py`` (slow tier) runs every
registered property again with ``deep`` examples, so ``make check`` stays quick and
``make test`` searches ≥ 10,000 examples in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

__all__ = ["DeepProperty", "prop", "deep_test"]


@dataclass(frozen=True)
class DeepProperty:
    body: Callable[..., Any]
    strategies: tuple[st.SearchStrategy, ...]
    examples: int


def prop(*strategies: st.SearchStrategy, fast: int, deep: int) -> Callable[[Callable[..., Any]], Any]:
    """``@given(*strategies)`` with ``fast`` examples; the deep tier reruns it with ``deep``."""

    def wrap(body: Callable[..., Any]) -> Any:
        test = settings(max_examples=fast, deadline=None, suppress_health_check=[HealthCheck.too_slow])(
            given(*strategies)(body)
        )
        test.deep_property = DeepProperty(body, strategies, deep)
        return test

    return wrap


def deep_test(fast_test: Any) -> Any:
    """The same property as ``fast_test`` with its deep number of examples."""
    p: DeepProperty = fast_test.deep_property
    return settings(
        max_examples=p.examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(given(*p.strategies)(p.body))
