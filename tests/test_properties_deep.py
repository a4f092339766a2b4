"""The slow tier's run of every two-tier Hypothesis property (see :mod:`tests.properties`):
metrics, layouts and alignment, each with its ``deep`` number of examples (≥ 10,000 in all)."""

from __future__ import annotations

from . import test_align, test_layout, test_metrics
from .properties import deep_test

_MODULES = (test_metrics, test_layout, test_align)
_FAST = {
    f"{module.__name__.rsplit('.', 1)[-1]}__{name.removeprefix('test_')}": getattr(module, name)
    for module in _MODULES
    for name in dir(module)
    if name.startswith("test_") and hasattr(getattr(module, name), "deep_property")
}
globals().update({f"test_deep_{key}": deep_test(test) for key, test in _FAST.items()})


def test_the_deep_tier_searches_at_least_ten_thousand_examples():
    total = sum(test.deep_property.examples for test in _FAST.values())
    assert len(_FAST) >= 8 and total >= 10_000, (len(_FAST), total)
