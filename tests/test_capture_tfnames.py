"""TensorFlow graph utilities that need no TensorFlow: tensor and node names, the ``import/``
scope, resolving names, globs and regexes, topological order, name scopes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from parity.capture.tfnames import (
    node_of,
    parent_scope,
    resolve_tensor_name,
    resolve_tensor_names,
    strip_prefix,
    tensor_name,
    topological,
)
from parity.errors import MappingError

NAMES = ["conv1/Conv2D:0", "conv1/Relu6:0", "conv2/Conv2D:0", "conv2/Relu6:0", "split:0", "split:1"]


def test_names_with_and_without_the_import_scope_and_the_output_index():
    assert strip_prefix("import/conv1/Relu6:0") == "conv1/Relu6:0" and strip_prefix("^import/a") == "a"
    assert tensor_name("conv1/Relu6") == "conv1/Relu6:0" and tensor_name("split:1") == "split:1"
    assert node_of("^conv1/Relu6") == node_of("conv1/Relu6:0") == "conv1/Relu6"
    assert parent_scope("conv1/bn/add_1") == "conv1/bn" and parent_scope("input") == ""


def test_a_name_a_glob_and_a_regex_select_tensors_in_graph_order():
    assert resolve_tensor_names(NAMES, "import/conv2/Relu6") == ["conv2/Relu6:0"]
    assert resolve_tensor_names(NAMES, "*/Relu6:0") == ["conv1/Relu6:0", "conv2/Relu6:0"]
    assert resolve_tensor_names(NAMES, "split") == ["split:0"]
    assert resolve_tensor_names(NAMES, "split*") == ["split:0", "split:1"]  # a glob without :N matches the op
    assert resolve_tensor_names(NAMES, r"re:conv\d/Conv2D") == ["conv1/Conv2D:0", "conv2/Conv2D:0"]


def test_nothing_or_several_matching_is_a_mapping_error_with_the_closest_names():
    with pytest.raises(MappingError, match=r"^the graph has no tensor matching 'conv3/Relu6:0'. Closest names: conv2/Relu6:0, conv1/Relu6:0"):
        resolve_tensor_name(NAMES, "conv3/Relu6:0")
    with pytest.raises(MappingError, match=r"'\*/Relu6:0' matches 2 tensors: conv1/Relu6:0, conv2/Relu6:0"):
        resolve_tensor_name(NAMES, "*/Relu6:0")


def test_topological_order_keeps_a_sorted_file_and_sorts_one_out_of_order():
    def node(name, *inputs, op="Op"):
        return SimpleNamespace(name=name, input=list(inputs), op=op)

    ordered = [node("x", op="Placeholder"), node("a", "x"), node("b", "a:0", "^x")]
    assert [n.name for n in topological(ordered)] == ["x", "a", "b"]
    shuffled = [node("b", "a:0"), node("a", "x"), node("x", op="Placeholder")]
    assert [n.name for n in topological(shuffled)] == ["x", "a", "b"]
    loop = [node("x"), node("merge", "x", "next"), node("next", "merge", op="NextIteration")]
    assert [n.name for n in topological(loop)] == ["x", "merge", "next"]  # the back edge is ignored
