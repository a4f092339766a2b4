"""parity.search: Hypothesis looks for inputs on which a pair parts, and shrinks them."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
pytest.importorskip("hypothesis")

from hypothesis import Phase, given, settings  # noqa: E402

import parity  # noqa: E402
from parity.search import InputRecipe, PATTERNS, SearchResult, inputs_strategy, search  # noqa: E402
from parity._zoo import ConvNet, randomize_bn, to_keras  # noqa: E402

SHAPE = (2, 3, 16, 16)


class SmallNet(torch.nn.Module):
    """Conv → ReLU → global average pool → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


def keras_twin(model: SmallNet, max_value: float | None) -> keras.Model:
    inp = keras.Input((16, 16, 3), name="image")
    conv = keras.layers.Conv2D(8, 3, padding="same", name="conv")
    fc = keras.layers.Dense(4, name="fc")
    x = keras.layers.ReLU(max_value=max_value, name="act")(conv(inp))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    km = keras.Model(inp, fc(x), name="small_twin")
    conv.set_weights([model.conv.weight.detach().numpy().transpose(2, 3, 1, 0), model.conv.bias.detach().numpy()])
    fc.set_weights([model.fc.weight.detach().numpy().T, model.fc.bias.detach().numpy()])
    return km


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return SmallNet().eval()


@pytest.fixture(scope="module")
def relu6_twin(small):
    return keras_twin(small, max_value=6.0)  # the bug: ReLU converted as ReLU6


@pytest.fixture(scope="module")
def relu_twin(small):
    return keras_twin(small, max_value=None)


def test_search_finds_the_relu6_bug_that_unit_inputs_hide(small, relu6_twin, tmp_path, capsys):
    unit = np.random.default_rng(0).random(SHAPE).astype("float32")
    assert parity.diff(small, relu6_twin, unit).ok  # the bug hides on unit-range inputs

    result = search(small, relu6_twin, max_examples=40, seed=0, save_to=tmp_path)

    assert isinstance(result, SearchResult) and result.found
    assert result.report.first_divergence.a_name == "act"
    assert result.worst_ratio > 1 and 0 < result.examples <= 40 + 40 + 1
    # shrunk: the irrelevant knobs are gone
    assert result.recipe.offset == 0 and result.recipe.channel_offset == 0
    assert result.inputs.shape == SHAPE and result.inputs.dtype == np.float32

    assert result.path is not None and result.path.exists() and result.path.parent == tmp_path
    assert str(result.path) in capsys.readouterr().out
    saved = np.load(result.path)
    np.testing.assert_array_equal(saved, result.inputs)
    again = parity.diff(small, relu6_twin, saved)
    assert not again.ok and again.first_divergence.a_name == "act"

    text = str(result)
    assert "FOUND" in text and "act" in text and str(result.path) in text


def test_search_is_reproducible_and_save_to_none_saves_nothing(small, relu6_twin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = search(small, relu6_twin, max_examples=20, seed=3, save_to=None)
    second = search(small, relu6_twin, max_examples=20, seed=3, save_to=None)
    assert first.found and first.path is None and not any(tmp_path.iterdir())
    assert first.recipe == second.recipe
    np.testing.assert_array_equal(first.inputs, second.inputs)


def test_correct_pair_is_not_found(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ConvNet().eval())
    result = search(model, to_keras(model, bn_epsilon="match"), max_examples=30, save_to=tmp_path)
    assert not result.found and result.path is None and not any(tmp_path.iterdir())
    assert result.report.ok and result.worst_ratio < 1
    assert result.inputs.shape == (2, 1, 28, 28)  # from the declared input spec, batch 2, A's layout
    assert result.examples >= 20
    assert result.summary().startswith("✓ NOT FOUND")


def test_search_needs_a_complete_shape(small, relu_twin):
    with pytest.raises(parity.InputError, match="shape="):
        search(small, relu_twin, shape=(2, 3, None, 16), max_examples=1)


def test_strategy_in_a_users_given_test(small, relu_twin, relu6_twin):
    @settings(max_examples=15, deadline=None, database=None, derandomize=True)
    @given(inputs_strategy(SHAPE))
    def correct_pair_agrees(x):
        parity.assert_parity(small, relu_twin, x)

    correct_pair_agrees()

    @settings(max_examples=40, deadline=None, database=None, derandomize=True, phases=[Phase.generate])
    @given(inputs_strategy(SHAPE))
    def buggy_pair_agrees(x):
        parity.assert_parity(small, relu6_twin, x)

    with pytest.raises(parity.ParityMismatch, match="'act'"):
        buggy_pair_agrees()


@settings(max_examples=60, deadline=None, database=None)
@given(inputs_strategy((2, 3, 8, 8), layout="NCHW"))
def test_strategy_makes_finite_float32_arrays(x):
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32
    assert np.isfinite(x).all() and np.abs(x).max() < 1e5


def test_recipe_patterns():
    shape = (2, 3, 6, 5)
    build = lambda **kw: InputRecipe(**kw).build(shape, "NCHW")  # noqa: E731
    assert np.all(build(pattern="constant", log_scale=1.0) == 10.0)
    border = build(pattern="border", seed=1)
    assert np.all(border[:, :, 1:-1, 1:-1] == 0) and np.all(border[:, :, 0, :] > 0)
    spikes = build(pattern="spikes", density=0.05)
    assert 0 < np.count_nonzero(spikes) < spikes.size / 5 and set(np.unique(spikes)) <= {-1.0, 0.0, 1.0}
    checker = build(pattern="checker")
    assert checker[0, 0, 0, 0] == 1 and checker[0, 0, 0, 1] == -1 and checker[0, 0, 1, 1] == 1
    assert np.all(np.diff(build(pattern="ramp")[0, 0, 0, :]) > 0)
    # per-channel offsets go on the channel axis of the layout given
    nhwc = InputRecipe(pattern="constant", channel_offset=1.0).build((1, 4, 4, 3), "NHWC")
    assert np.ptp(nhwc[..., 0]) == 0 and np.ptp(nhwc[0, 0, 0, :]) > 0
    # uniform vs normal, scale and offset, and the same recipe builds the same array
    assert build(pattern="uniform", log_scale=-3.0).max() < 1e-3
    assert build(pattern="uniform", offset=2.0).min() >= 2.0
    assert build(pattern="normal").min() < 0
    np.testing.assert_array_equal(build(pattern="normal", seed=7), build(pattern="normal", seed=7))
    assert set(PATTERNS) >= {"uniform", "normal", "constant", "border", "spikes"}
    assert "scale 10" in InputRecipe(log_scale=1.0).describe()


def test_parity_search_is_the_function_and_keeps_the_module_names():
    import inspect

    module = sys.modules["parity.search"]
    assert parity.search is search and module.search is search and inspect.isfunction(search)
    assert parity.SearchResult is SearchResult and module.inputs_strategy is inputs_strategy
    # what README's ``parity.search.inputs_strategy(shape)`` reaches when parity.search was a module
    assert parity.search.inputs_strategy is inputs_strategy and parity.search.SearchResult is SearchResult
    assert parity.search.InputRecipe is InputRecipe and parity.search.PATTERNS == PATTERNS


def test_bad_recipe_arguments_are_input_errors():
    from parity.search import recipes

    with pytest.raises(parity.InputError, match="unknown input pattern.*'zigzag'.*give patterns from uniform"):
        recipes(["zigzag"])
    with pytest.raises(ValueError, match=r"log_scale must be .* e.g. \(-3, 3\); got \(3, -3\)"):
        recipes(log_scale=(3, -3))
