"""Which implementation a kernel op runs, and the epilogue activations the kernels share.

Every op in this package has a Triton kernel and a plain-torch reference. The op runs the kernel
when Triton can run it on the op's tensors: CUDA tensors with Triton installed, or CPU tensors
when Triton's interpreter is on (``TRITON_INTERPRET=1``, set before this package is imported:
``@triton.jit`` decides at definition time). Otherwise it runs the reference, so the package
installs and runs wherever PyTorch does (Triton's wheels exist for Linux on x86-64 and ARM64
only). Whether a realigned graph calls these ops at all is the lowering's decision, not this
module's.
"""

from __future__ import annotations

import os

import torch

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
    from graft_fx.errors import GraftError

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
