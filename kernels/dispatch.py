"""Which implementation a kernel op runs, and the epilogue activations the kernels share.

Every op in this package has a Triton kernel and a plain-torch reference. The op runs the kernel
when Triton can run it on the op's tensors: CUDA tensors with Triton installed, or CPU tensors
when Triton's interpreter is on (``TRITON_INTERPRET=1``, set before this package is imported:
``@triton.jit`` decides at definition time). Otherwise it runs the reference, so the package
installs and runs wherever PyTorch does (Triton's wheels exist for Linux on x86-64 and ARM64
only). Whether a realigned graph calls these ops at all is the lowering's decision, not this
module's.

Ops without a backward formula are registered `inference_only`: their outputs join the autograd
graph like any op's, and a backward through them raises `InferenceOnlyError` naming the op,
instead of the outputs silently not requiring grad (which cuts gradients off, or fails later with
"element 0 of tensors does not require grad").
"""

from __future__ import annotations

import os
from typing import Any

import torch

from graft_fx.errors import GraftError

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
    HAS_TRITON = True
except ImportError:  # no wheel for this platform: the references serve
    HAS_TRITON = False

ACTIVATIONS = ("none", "relu", "gelu")
"""Epilogue activations, by name; a kernel takes the index as a ``tl.constexpr``. ``gelu`` is the
exact (erf) GELU, ``torch.nn.functional.gelu``'s default."""


_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # as the kernels defined after this import see it


def interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels (on the CPU, in numpy): whether
    ``TRITON_INTERPRET=1`` was set when this package was imported, which is when its kernels
    were defined; setting it later changes nothing."""
    return _INTERPRETING


def use_triton(*tensors: torch.Tensor, dot: bool = False) -> bool:
    """Whether the Triton kernel can run on ``tensors`` (all on one device): CUDA with Triton
    installed, or the CPU when the kernels were defined under the interpreter. ``dot``: the
    kernel multiplies with ``tl.dot``, whose bfloat16 the interpreter gets wrong, so bfloat16
    runs the reference there."""
    if not HAS_TRITON or not tensors:
        return False
    kinds = {t.device.type for t in tensors}
    if kinds == {"cuda"}:
        return True
    return kinds == {"cpu"} and _INTERPRETING and not (dot and any(t.dtype == torch.bfloat16 for t in tensors))


def check_tensors(op: str, names: str, tensors: list[torch.Tensor], dtypes: tuple[torch.dtype, ...]) -> None:
    """GraftError unless ``tensors`` (the op's ``names``, for the message) share one dtype among
    ``dtypes`` and one device."""
    if tensors[0].dtype not in dtypes or any(t.dtype != tensors[0].dtype for t in tensors):
        raise GraftError(f"{op}: {names} must share one dtype of {', '.join(map(str, dtypes))}; got "
                         f"{', '.join(str(t.dtype) for t in tensors)}")
    if any(t.device != tensors[0].device for t in tensors):
        raise GraftError(f"{op}: {names} must be on one device; got {', '.join(str(t.device) for t in tensors)}")


def activation_code(name: str) -> int:
    """The ``tl.constexpr`` code of activation ``name``; ValueError naming the known ones."""
    try:
        return ACTIVATIONS.index(name)
    except ValueError:
        raise ValueError(f"activation {name!r}: expected one of {', '.join(ACTIVATIONS)}") from None


def activate(y: torch.Tensor, name: str) -> torch.Tensor:
    """The reference epilogue: ``y`` through activation ``name`` (`ACTIVATIONS`)."""
    code = activation_code(name)
    if code == 1:
        return torch.relu(y)
    if code == 2:
        return torch.nn.functional.gelu(y)
    return y


class InferenceOnlyError(GraftError):
    """A backward pass reached a graft kernel op that has no gradient formula."""


@torch.library.custom_op("graft::no_backward", mutates_args=())
def _no_backward(grad: torch.Tensor, name: str) -> torch.Tensor:
    """Raise `InferenceOnlyError` for op ``graft::<name>``: the backward of an `inference_only` op,
    ``grad`` the output's gradient (any shape). Its fake returns a 0-dim tensor of ``grad``'s dtype,
    which the traced backward expands into the inputs' gradients. An op rather than a plain ``raise`` so that tracing a backward (AOTAutograd compiling a graph
    in grad mode) records it instead of failing: the error comes when a backward runs."""
    raise InferenceOnlyError(f"graft::{name} is inference-only: it has no backward formula. Run the realigned "
                             f"module under torch.no_grad() or torch.inference_mode() to serve it, or realign "
                             f"with kernels=\"torch\" to train or differentiate through it")


@_no_backward.register_fake
def _(grad: torch.Tensor, name: str) -> torch.Tensor:
    return grad.new_empty(())


def _spec(value: Any) -> Any:
    """What a backward needs of one op input to shape its gradient: ``(shape, dtype)`` of a
    tensor, a list of those for a list of tensors, None for anything else (or a None tensor)."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.dtype
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return [_spec(v) for v in value]
    return None


def _gradient(token: torch.Tensor, spec: Any) -> Any:
    """A gradient shaped by ``spec`` (`_spec`): ``token`` (0-dim) expanded, no memory per element."""
    if isinstance(spec, list):
        return [_gradient(token, s) for s in spec]
    return None if spec is None else token.to(spec[1]).expand(spec[0])


def inference_only(op: Any, name: str) -> None:
    """Register an autograd formula on the custom op ``op`` (``graft::<name>``, made by
    ``torch.library.custom_op``) whose backward raises `InferenceOnlyError` naming the op.

    Why: a custom op without an autograd registration returns outputs with ``requires_grad=False``
    even when its inputs require grad, so gradients silently stop at it, and ``.backward()`` fails
    far away with a generic message or not at all. With this registration the forward is unchanged
    (it saves the inputs' shapes and dtypes, no tensors), its outputs require grad whenever an
    input does, and a backward through it raises. The raise is the op ``graft::no_backward``,
    so torch.compile in grad mode still compiles (its traced backward holds the op) and raises
    only if that backward runs; the gradients it would return are never computed.
    """

    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        ctx.specs = [_spec(value) for value in inputs]

    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        token = torch.ops.graft.no_backward(grad, name)
        return tuple(_gradient(token, spec) for spec in ctx.specs)

    op.register_autograd(backward, setup_context=setup_context)
