"""Turn what a user hands us (nn.Module, GraphModule, ExportedProgram) into one fx graph form.

Every later pass reads a ``Captured``: a GraphModule whose placeholders are the fragment's flat
tensor inputs, the specs of those inputs (shape of one row, dtype), and the output as a pytree of
graph leaves. Plain modules are traced with ``torch.fx.symbolic_trace``; an ExportedProgram is
unlifted with ``ExportedProgram.module()`` (an aten-level graph); a GraphModule is used as is.
Input shapes come from the example inputs when given, else from the placeholders' metadata
(``tensor_meta`` written by ShapeProp or by ``graft_fx.split``, or ``val`` written by export).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.fx.immutable_collections import immutable_dict, immutable_list

from .errors import GraftError, TraceError
from .rows import InputSpec

_TORCH_DIR = os.path.dirname(torch.__file__)


@dataclass
class Captured:
    """A fragment in graph form. ``call`` runs it exactly as the user gave it."""

    gm: fx.GraphModule
    call: Callable[..., Any]
    inputs: list[InputSpec]
    out_leaves: list[Any]
    out_spec: pytree.TreeSpec
    name: str

    @property
    def placeholders(self) -> list[fx.Node]:
        return [n for n in self.gm.graph.nodes if n.op == "placeholder"]


def fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    """The object a ``get_attr`` or ``call_module`` target names (``"layer1.0.conv1.weight"``)."""
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _user_frame(e: BaseException) -> str:
    """The innermost traceback line outside torch: the construct that tracing failed on."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    if not frames:
        return ""
    f = frames[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" at {os.path.basename(f.filename)}:{f.lineno}{code}"


def trace(module: torch.nn.Module, name: str) -> fx.GraphModule:
    """Symbolically trace ``module``, or explain which construct stopped the tracer."""
    if isinstance(module, fx.GraphModule):
        return module
    try:
        return fx.symbolic_trace(module)
    except Exception as e:  # noqa: BLE001 - any tracer failure becomes a TraceError
        raise TraceError(
            f"{name} could not be traced with torch.fx.symbolic_trace{_user_frame(e)}: {e}. "
            "Data-dependent control flow and other dynamic Python cannot be traced symbolically; "
            "export the fragment with torch.export.export(module, example_inputs, dynamic_shapes="
            "{...: {0: torch.export.Dim('batch')}}) and pass the ExportedProgram instead"
        ) from e


def _as_tuple(example: Any) -> tuple:
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def _spec_from_meta(node: fx.Node) -> InputSpec | None:
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape"):
        return InputSpec(tuple(meta.shape[1:]), meta.dtype)
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return InputSpec(tuple(int(d) for d in val.shape[1:]), val.dtype, val.device)
    return None


def _input_specs(gm: fx.GraphModule, example: Any, name: str) -> list[InputSpec]:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if example is not None:
        tensors = _as_tuple(example)
        if len(tensors) != len(placeholders):
            raise GraftError(f"{name} takes {len(placeholders)} input(s), but its example has {len(tensors)}")
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                raise GraftError(f"{name}: example input {i} must be a tensor with a batch dim 0, got {t!r}")
        return [InputSpec(tuple(t.shape[1:]), t.dtype, t.device) for t in tensors]
    specs = [_spec_from_meta(p) for p in placeholders]
    missing = [p.name for p, s in zip(placeholders, specs) if s is None]
    if missing:
        raise GraftError(
            f"{name}: the shape of input(s) {missing} is unknown; pass example inputs for this "
            "fragment, or build it with graft_fx.split or torch.export, which record shapes"
        )
    return specs


def _thaw(arg: Any) -> Any:
    """fx freezes lists and dicts in node args; give the user back the plain containers."""
    if isinstance(arg, immutable_list):
        return [_thaw(a) for a in arg]
    if isinstance(arg, immutable_dict):
        return {k: _thaw(v) for k, v in arg.items()}
    if isinstance(arg, tuple) and not hasattr(arg, "_fields"):
        return tuple(_thaw(a) for a in arg)
    return arg


def _is_leaf(x: Any) -> bool:
    return isinstance(x, fx.Node)


def capture(fragment: Any, example: Any = None, name: str = "fragment") -> Captured:
    """Bring ``fragment`` into graph form, with its input specs and output structure."""
    if isinstance(fragment, torch.export.ExportedProgram):
        gm = fragment.module()
        call = gm
    elif isinstance(fragment, torch.nn.Module):
        gm = trace(fragment, name)
        call = fragment
    else:
        raise GraftError(
            f"{name} is a {type(fragment).__name__}; expected an nn.Module, an fx.GraphModule "
            "or a torch.export.ExportedProgram"
        )
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    leaves, spec = pytree.tree_flatten(_thaw(output.args[0]), is_leaf=_is_leaf)
    codegen_spec = getattr(getattr(gm.graph._codegen, "pytree_info", None), "out_spec", None)
    if codegen_spec is not None:
        spec = codegen_spec
    return Captured(gm, call, _input_specs(gm, example, name), leaves, spec, name)
