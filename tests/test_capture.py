"""capture(): nn.Modules, GraphModules and ExportedPrograms brought into one graph form.

Covers where input shapes come from (examples first, then placeholder metadata), that output
structures survive re-alignment, and that every bad input is a GraftError naming what was wrong.
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.fx.passes.shape_prop import ShapeProp

import graft_fx
from models import realign_all
from graft_fx.capture import capture


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -x


class Features(nn.Module):
    """Returns a dict holding a tuple, so output structure has something to keep."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.fc(x))
        return {"features": h, "out": (self.head(h), h.sum(1))}


class Pointwise(nn.Module):
    def forward(self, image):
        return torch.relu(image) * 2


def features() -> nn.Module:
    torch.manual_seed(0)
    return Features().eval()


def exported(model: nn.Module) -> torch.export.ExportedProgram:
    return torch.export.export(model, (torch.randn(3, 4),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})


def assert_same_outputs(actual, expected):
    assert pytree.tree_structure(actual) == pytree.tree_structure(expected)
    for a, e in zip(pytree.tree_leaves(actual), pytree.tree_leaves(expected)):
        torch.testing.assert_close(a, e)


def source_line(function, text: str) -> int:
    lines, start = inspect.getsourcelines(function)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_untraceable_module_names_the_line_and_what_to_do():
    with pytest.raises(graft_fx.TraceError) as info:
        capture(DataDependent(), torch.randn(2, 4))
    message = str(info.value)
    line = source_line(DataDependent.forward, "if x.sum() > 0:")
    assert f"{os.path.basename(__file__)}:{line} `if x.sum() > 0:`" in message
    assert "torch.export" in message and "torch.cond" in message


class AcrossSamples(nn.Module):
    def forward(self, x):
        return torch.diff(x, dim=0)  # one row fewer than it reads: torch.export guards batch != 1


def test_a_fragment_that_works_only_for_some_batch_sizes_quotes_the_guard():
    with pytest.raises(graft_fx.TraceError) as info:
        capture(AcrossSamples(), torch.randn(3, 4))
    message = str(info.value)
    assert "satisfy the generated guard" in message and "works only for some batch sizes" in message
    assert "torch.diff" in message  # the advice names the usual suspects


def test_untraceable_fragment_is_named_by_its_position():
    with pytest.raises(graft_fx.TraceError, match=r"fragment 1 \(DataDependent\)"):
        realign_all([features(), DataDependent()], [torch.randn(2, 4), torch.randn(2, 4)])


def test_trace_error_is_a_graft_error_and_a_value_error():
    assert issubclass(graft_fx.TraceError, graft_fx.GraftError)
    assert issubclass(graft_fx.GraftError, ValueError)


def test_module_is_traced_and_called_as_given():
    model = features()
    captured = capture(model, torch.randn(2, 4))
    assert isinstance(captured.gm, fx.GraphModule)
    assert captured.call is model
    assert [p.name for p in captured.placeholders] == ["x"]


def test_graph_module_is_captured_and_called_as_given():
    gm = fx.symbolic_trace(features())
    captured = capture(gm, torch.randn(2, 4))
    assert captured.call is gm
    assert all(n.op != "call_module" for n in captured.gm.graph.nodes)


def test_graph_module_shapes_come_from_tensor_meta():
    gm = fx.symbolic_trace(features())
    ShapeProp(gm).propagate(torch.randn(2, 4, dtype=torch.float32))
    (spec,) = capture(gm).inputs
    assert (spec.row_shape, spec.dtype) == ((4,), torch.float32)


def test_graph_module_shapes_come_from_val():
    """Graphs from make_fx or export record a fake tensor in meta['val'] and no tensor_meta."""
    gm = exported(features()).module()
    for node in gm.graph.find_nodes(op="placeholder"):
        del node.meta["tensor_meta"]
    (spec,) = capture(gm).inputs
    assert (spec.row_shape, spec.dtype, spec.device) == ((4,), torch.float32, torch.device("cpu"))


def test_exported_program_keeps_a_dynamic_batch_and_its_output_structure():
    model = features()
    program = exported(model)
    (spec,) = capture(program).inputs
    assert (spec.row_shape, spec.dtype) == ((4,), torch.float32)
    realigned = realign_all([program, program])
    for batches in [(1, 3), (2, 0), (None, 1)]:
        inputs = [None if b is None else torch.randn(b, 4) for b in batches]
        for x, out in zip(inputs, realigned(*inputs)):
            assert_same_outputs(out, None if x is None else model(x))


def test_exported_fragments_share_their_layers():
    realigned = realign_all([exported(features()), exported(features())])
    assert any(s.fragments == (0, 1) for s in realigned.plan.segments)


def test_traced_module_keeps_its_output_structure():
    model = features()
    x = torch.randn(3, 4)
    (out,) = realign_all([model], [x])(x)
    assert_same_outputs(out, model(x))


def test_example_inputs_override_metadata():
    gm = fx.symbolic_trace(Pointwise())
    ShapeProp(gm).propagate(torch.randn(2, 4))
    (spec,) = capture(gm, torch.randn(5, 7, dtype=torch.float64)).inputs
    assert (spec.row_shape, spec.dtype) == ((7,), torch.float64)
    with pytest.raises(graft_fx.GraftError, match="do not match the inputs it was exported with"):
        capture(exported(features()), torch.randn(5, 4, dtype=torch.float64))


def test_missing_shapes_name_the_input():
    with pytest.raises(graft_fx.GraftError, match=r"\['image'\].*example inputs"):
        capture(Pointwise())
    with pytest.raises(graft_fx.GraftError, match=r"fragment 0 \(Pointwise\).*\['image'\]"):
        realign_all([Pointwise()])


def test_wrong_number_of_example_inputs():
    with pytest.raises(graft_fx.GraftError, match=r"takes 1 input\(s\), but its example has 2"):
        capture(Pointwise(), (torch.randn(2, 4), torch.randn(2, 4)))


@pytest.mark.parametrize("example", [torch.tensor(1.0), 3], ids=["scalar_tensor", "int"])
def test_example_inputs_must_be_batched_tensors(example):
    with pytest.raises(graft_fx.GraftError, match="batch dim 0"):
        capture(Pointwise(), example)


@pytest.mark.parametrize("fragment", [lambda x: x, "resnet50", None], ids=["lambda", "string", "none"])
def test_non_modules_are_rejected(fragment):
    with pytest.raises(graft_fx.GraftError, match=f"is a {type(fragment).__name__}; expected an nn.Module"):
        capture(fragment)
