"""The kernel ops without a backward formula (`dispatch.inference_only`): in grad mode their outputs
require grad whenever an input does, so nothing is silently cut off the autograd graph, and a
backward through them raises InferenceOnlyError naming the op, eagerly and compiled; their values
are those computed without grad. Batch sizes 0 and 1 included."""

from __future__ import annotations

import pytest
import torch

from graft_fx import GraftError
from graft_fx.kernels.dispatch import InferenceOnlyError
from graft_fx.kernels.gather_linear import gather_linear
from graft_fx.kernels.segment_affine import segment_affine
from graft_fx.kernels.segment_conv2d import segment_conv2d
from graft_fx.kernels.segment_matmul import segment_matmul


def matmul_case(sizes):
    x, weight, bias = torch.randn(sum(sizes), 16), torch.randn(len(sizes), 16, 16), torch.randn(len(sizes), 16)
    return (lambda x, weight, bias: segment_matmul(x, weight, sizes, bias, "relu")), (x, weight, bias)


def conv2d_case(sizes):
    x, weight, bias = torch.randn(sum(sizes), 4, 5, 5), torch.randn(len(sizes), 3, 4, 3, 3), torch.randn(len(sizes), 3)
    return (lambda x, weight, bias: segment_conv2d(x, weight, bias, sizes, padding=(1, 1))), (x, weight, bias)


def affine_case(sizes):
    x, scale, shift, center = torch.randn(sum(sizes), 3, 2), *torch.randn(3, len(sizes), 3, 1)
    return (lambda x, scale, shift, center: segment_affine(x, scale, shift, sizes, center)), (x, scale, shift, center)


def gather_linear_case(sizes):
    x, weight, bias = torch.randn(sum(sizes), 16), torch.randn(16, 16), torch.randn(16)
    return (lambda x, weight, bias: gather_linear(list(x.split(sizes)), weight, bias, "gelu")), (x, weight, bias)


CASES = {"segment_matmul": matmul_case, "segment_conv2d": conv2d_case, "segment_affine": affine_case,
         "gather_linear": gather_linear_case}
SIZES = [(2, 3), (1, 0), (0, 0), (1,)]  # batch sizes 0 and 1 among them


def grad_inputs(tensors, which):
    """Copies of ``tensors``, those at positions ``which`` requiring grad."""
    return [t.clone().requires_grad_(i in which) for i, t in enumerate(tensors)]


@pytest.mark.parametrize("op", CASES)
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("which", [(0,), (1,), (0, 1, 2)], ids=["rows", "weights", "all"])
def test_backward_raises_naming_the_op(op, sizes, which):
    fn, tensors = CASES[op](list(sizes))
    out = fn(*grad_inputs(tensors, which))
    assert out.requires_grad and out.grad_fn is not None
    with pytest.raises(InferenceOnlyError, match=rf'graft::{op} is inference-only.*kernels="torch"'):
        out.sum().backward()


@pytest.mark.parametrize("op", CASES)
@pytest.mark.parametrize("sizes", SIZES)
def test_grad_mode_leaves_values_unchanged(op, sizes):
    fn, tensors = CASES[op](list(sizes))
    with torch.no_grad():
        expected = fn(*tensors)
    assert not expected.requires_grad
    torch.testing.assert_close(fn(*grad_inputs(tensors, range(len(tensors)))).detach(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("op", CASES)
def test_inputs_without_grad_give_outputs_without_grad(op):
    fn, tensors = CASES[op]([2, 1])
    assert not fn(*tensors).requires_grad


@pytest.mark.parametrize("op", CASES)
def test_compiled_in_grad_mode_runs_and_its_backward_raises(op):
    """AOTAutograd traces the backward when it compiles: the error must wait until it runs."""
    torch._dynamo.reset()
    fn, tensors = CASES[op]([2, 1])
    inputs = grad_inputs(tensors, range(len(tensors)))
    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(*inputs)
    torch.testing.assert_close(out.detach(), fn(*tensors))
    assert out.requires_grad
    with pytest.raises(InferenceOnlyError, match=f"graft::{op} is inference-only"):
        out.sum().backward()
    torch._dynamo.reset()


def test_the_error_is_a_graft_error():
    assert issubclass(InferenceOnlyError, GraftError)


@pytest.mark.parametrize("op, args", [
    ("segment_matmul", lambda x, w, b: (x, w, [2, 0, 1], b, "relu")),
    ("gather_linear", lambda x, w, b: ([x[:2], x[2:]], w[0].T.contiguous(), b[0], "none")),
])
def test_opcheck_sees_the_autograd_registration(op, args):
    """With inputs requiring grad, opcheck's autograd-registration test passes. Its AOT dispatch
    tests are left out here because they compare eager and compiled gradients, so they run the
    backward, which raises by design; AOT dispatch without grad runs in each op's own opcheck
    test, and a compiled backward is `test_compiled_in_grad_mode_runs_and_its_backward_raises`."""
    x, w, b = torch.randn(3, 16), torch.randn(3, 16, 16), torch.randn(3, 16)
    torch.library.opcheck(getattr(torch.ops.graft, op), args(*(t.requires_grad_() for t in (x, w, b))),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
