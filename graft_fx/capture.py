"""One canonical capture: every fragment becomes one ATen-level fx graph with a symbolic batch.

Whatever a user hands us (an nn.Module, an fx GraphModule, a ``torch.export`` ExportedProgram, or
a tail that ``graft_fx.split`` made) is lowered to the same form, so that every later pass judges
what eager PyTorch actually runs and fragments from different sources share with each other:

* **torch.export, non-strict, with a dynamic batch** (one ``Dim("batch")`` for dim 0 of every
  input), under ``torch.no_grad()`` because serving is inference. Non-strict export runs the
  module's real ``__call__`` with fake tensors, so forward hooks and pre-hooks, functions wrapped
  with ``torch.fx.wrap``, autocast regions and Python size arithmetic all become explicit ATen
  ops and ``sym_size`` nodes; sizes derived from the batch stay symbolic (``s0 // 2``), never
  frozen at an example value. We chose export over ``make_fx(tracing_mode="symbolic")`` because
  it also accepts ExportedPrograms as they are, records mutations in a graph signature, and
  keeps ``nn_module_stack`` for readable layer names.
* **The training IR, made functional where it must be.** Export's default IR keeps composite ops
  (``linear``, ``conv2d``, ``layer_norm``) that make good layer keys and cheap FLOP formulas.
  In-place ops (``relu_``, ``add_``) are rewritten to their functional forms when the mutated
  tensor is a plain value (no view of it exists); otherwise, and for higher-order ops (autocast,
  ``set_grad_enabled`` regions), the program is functionalized by
  ``ExportedProgram.run_decompositions({})``, which inlines them (and respells a few ops, which
  ``canonical.py`` spells back, so that both kinds of capture share).
* **Lifted.** Parameters, buffers and constants become ``get_attr`` nodes on the very tensors the
  fragment owns (no copies); user inputs stay placeholders; the user outputs are the output
  leaves. A mutation of a user input or a buffer is applied at the end with ``aten.copy_``, as
  eager would leave it. Every node keeps ``meta["val"]`` (fake tensors with symbolic shapes) and
  ``meta["nn_module_stack"]``.

A GraphModule that ``split`` made is already in this form (``gm.meta["graft_batch"]`` names its
batch symbol) and is used as it is; that keeps ``split`` followed by ``realign`` cheap.
"""

from __future__ import annotations

import inspect
import operator
import os
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import sympy
import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from .canonical import canonicalize
from .errors import GraftError, TraceError
from .facts import hint

_TORCH_DIR = os.path.dirname(torch.__file__)
EXAMPLE_ROWS = 2
"""Rows of the example that export traces with: at least 2, so the batch is not specialized."""


@dataclass(frozen=True)
class InputSpec:
    """One fragment input: a tensor with a free batch dim 0 and this shape for each row."""

    row_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device | None = None

    def describe(self) -> str:
        return "(*, " + ", ".join(map(str, self.row_shape)) + ")" if self.row_shape else "(*,)"


@dataclass
class Captured:
    """A fragment in canonical graph form. ``call`` runs it exactly as the user gave it."""

    gm: fx.GraphModule
    call: Callable[..., Any]
    inputs: list[InputSpec]
    out_leaves: list[Any]
    out_spec: pytree.TreeSpec
    name: str
    batch: sympy.Symbol

    @property
    def placeholders(self) -> list[fx.Node]:
        return [n for n in self.gm.graph.nodes if n.op == "placeholder"]


def fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    """The object a ``get_attr`` target names (``"layer1_0_conv1_weight"``)."""
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def layer_name(node: fx.Node) -> str:
    """A readable name for a node: the innermost module it ran in, and the op.

    ``"layer1.0.conv1 (conv2d)"``; nodes outside any submodule give the op alone.
    """
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    return f"{path} ({op})" if path else op


# --- errors ---------------------------------------------------------------------------------


def _user_frame(e: BaseException) -> str:
    """The innermost traceback line outside torch: the construct that capture failed on."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(_TORCH_DIR)
              and not f.filename.startswith(os.path.dirname(__file__))]
    if not frames:
        return ""
    f = frames[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" at {os.path.basename(f.filename)}:{f.lineno}{code}"


def _advice(e: BaseException) -> str:
    text = str(e)
    if "Constraints violated" in text or "specializ" in text:
        return ("its code works only for some batch sizes (the guard, where quoted, says which): a reshape "
                "to a literal batch, the batch as a Python number (len(x), math.sqrt(x.size(0))), or an op "
                "across samples (torch.diff or x[::2] along dim 0, torch.cdist) makes such a guard; graft_fx "
                "serves every batch size, so derive sizes from the input (x.reshape(x.size(0), -1)) or cut "
                "the model before that layer")
    if "data-dependent" in text.lower() or "GuardOnDataDependent" in type(e).__name__:
        return ("its control flow depends on tensor values; replace the branch with torch.where or "
                "torch.cond, or cut the model after it")
    return "torch.export could not trace it; see the error above and the torch.export documentation"


def _first_line(e: BaseException) -> str:
    """The error's first line, and the guards it names (a constraint violation lists them)."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    guards = [line.strip() for line in lines[1:] if line.strip().startswith("- Not all values")]
    return " ".join([lines[0].rstrip("."), *guards])


# --- example inputs -------------------------------------------------------------------------


def _as_tuple(example: Any) -> tuple:
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def _tile(t: torch.Tensor, name: str, i: int) -> torch.Tensor:
    """The example with at least EXAMPLE_ROWS rows, its own rows repeated: export must not see 1."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        raise GraftError(f"{name}: example input {i} must be a tensor with a batch dim 0, got {t!r}")
    if t.shape[0] == 0:
        raise GraftError(f"{name}: example input {i} has no rows; give at least one row")
    if t.shape[0] >= EXAMPLE_ROWS:
        return t
    return t[torch.arange(EXAMPLE_ROWS, device=t.device) % t.shape[0]]


def _spec_example(node: fx.Node) -> torch.Tensor | None:
    """A random example for a placeholder whose shape was recorded (ShapeProp's ``tensor_meta``
    or a fake ``val``)."""
    meta = node.meta.get("tensor_meta", node.meta.get("val"))
    if meta is None or not hasattr(meta, "shape") or len(meta.shape) == 0:
        return None
    shape, dtype = (EXAMPLE_ROWS, *(int(hint(d)) for d in meta.shape[1:])), meta.dtype
    return torch.randn(shape, dtype=dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)


def _examples(module: torch.nn.Module, example: Any, name: str) -> tuple[torch.Tensor, ...]:
    if example is not None:
        return tuple(_tile(t, name, i) for i, t in enumerate(_as_tuple(example)))
    required = [p.name for p in _positional(module) if p.default is inspect.Parameter.empty]
    unknown = f"the shape of input(s) {required} is unknown" if required else "its input shapes are unknown"
    if isinstance(module, fx.GraphModule):
        placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
        found = [_spec_example(p) for p in placeholders]
        if placeholders and all(t is not None for t in found):
            return tuple(found)
        unknown = f"the shape of input(s) {[p.name for p, t in zip(placeholders, found) if t is None]} is unknown"
    raise GraftError(
        f"{name}: {unknown}; pass example inputs for this fragment (one tensor or tuple per "
        "fragment, any batch size), or give a graft_fx.split tail or an ExportedProgram")


def _positional(module: torch.nn.Module) -> list[inspect.Parameter]:
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _check_arity(module: torch.nn.Module, args: tuple, name: str) -> None:
    """Example inputs must fill ``forward``'s required parameters (optional ones may be left out)."""
    params = _positional(module)
    if not params:
        return
    required = sum(p.default is inspect.Parameter.empty for p in params)
    if not required <= len(args) <= len(params):
        takes = required if required == len(params) else f"{required} to {len(params)}"
        raise GraftError(f"{name} takes {takes} input(s), but its example has {len(args)}")


# --- export ---------------------------------------------------------------------------------


def export_module(module: torch.nn.Module, example: Any, name: str) -> ExportedProgram:
    """``torch.export`` (non-strict) with one dynamic batch dim shared by every input."""
    args = _examples(module, example, name)
    _check_arity(module, args, name)
    batch = Dim("batch")
    try:
        with torch.no_grad():
            return torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args), strict=False)
    except Exception as e:  # noqa: BLE001 - any capture failure becomes a TraceError
        raise TraceError(
            f"{name} could not be captured with torch.export (non-strict, dynamic batch)"
            f"{_user_frame(e)}: {_first_line(e)}. {_advice(e)}"
        ) from e


def _is_hop(node: fx.Node) -> bool:
    return isinstance(node.target, torch._ops.HigherOrderOperator)


def _schema(node: fx.Node) -> Any:
    return node.target._schema if isinstance(node.target, torch._ops.OpOverload) else None


def _returns_view(node: fx.Node) -> bool:
    """Whether ``node``'s value may alias another tensor (a view op, or an item of one)."""
    if node.op == "call_function" and node.target is operator.getitem:
        node = node.args[0]
    schema = _schema(node)
    return schema is not None and any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def _mutates(node: fx.Node) -> bool:
    schema = _schema(node)
    return schema is not None and schema.is_mutable


def functional_form(node: fx.Node) -> Any:
    """The out-of-place overload of an in-place op (``aten.relu_.default`` -> ``aten.relu.default``),
    or None when the op mutates anything but its first argument or has no such twin."""
    schema = _schema(node)
    writes = [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
    if writes != [0] or not schema.name.endswith("_"):
        return None
    packet = getattr(torch.ops.aten, schema.name.split("::")[1].rstrip("_"), None)
    return getattr(packet, schema.overload_name or "default", None) if packet is not None else None


def _needs_functionalization(graph: fx.Graph) -> bool:
    """Higher-order ops, or an in-place op whose target has views: run_decompositions handles them."""
    for node in graph.nodes:
        if _is_hop(node):
            return True
        if node.op == "call_function" and _mutates(node):
            target = node.args[0]
            if functional_form(node) is None or not isinstance(target, fx.Node) or _returns_view(target):
                return True
            if any(_returns_view(u) for u in target.users):
                return True
    return False


def _lift(ep: ExportedProgram, name: str) -> tuple[fx.GraphModule, list[Any]]:
    """The program as a canonical GraphModule (``canonical.py``) with get_attr weights, and its
    user output leaves.

    In-place ops left in the graph (those ``_needs_functionalization`` let through) become their
    functional forms; later uses of the mutated value read the result instead. What a fragment
    mutated (a user input, a buffer) is written back with ``aten.copy_`` before the output.
    """
    sig = ep.graph_signature
    values = {**ep.state_dict, **ep.constants}
    root = torch.nn.Module()
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    sources: dict[str, fx.Node] = {}  # user input name or state target -> its node here
    latest: dict[fx.Node, fx.Node] = {}  # an input or attribute -> its value after in-place ops
    by_name = {s.arg.name: s for s in sig.input_specs}
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            spec = by_name[node.name]
            if spec.kind is InputKind.USER_INPUT:
                env[node] = graph.node_copy(node, env.__getitem__)
                sources[node.name] = env[node]
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                attr = spec.target.replace(".", "_")
                setattr(root, attr, values[spec.target])
                env[node] = graph.get_attr(attr)
                env[node].meta.update(node.meta)
                sources[spec.target] = env[node]
            else:
                raise TraceError(f"{name}: its program takes a {spec.kind.name.lower()} input "
                                 f"{node.name!r}; graft_fx handles tensors, parameters and buffers")
        elif node.op == "output":
            results = [env[a] if isinstance(a, fx.Node) else a for a in node.args[0]]
        elif node.op == "call_function" and _mutates(node):
            mutated = env[node.args[0]]
            new = graph.node_copy(node, env.__getitem__)
            new.target = functional_form(node)
            env[node] = env[node.args[0]] = new
            if mutated.op in ("placeholder", "get_attr") or mutated in latest.values():
                origin = next((o for o, v in latest.items() if v is mutated), mutated)
                latest[origin] = new
        else:
            env[node] = graph.node_copy(node, env.__getitem__)
    leaves = [r for r, s in zip(results, sig.output_specs) if s.kind is OutputKind.USER_OUTPUT]
    for r, s in zip(results, sig.output_specs):
        if s.kind in (OutputKind.USER_INPUT_MUTATION, OutputKind.BUFFER_MUTATION):
            latest[sources[s.target]] = r
    for origin, value in latest.items():
        copy = graph.call_function(torch.ops.aten.copy_.default, (origin, value))
        copy.meta["val"] = origin.meta.get("val")
    output = graph.output(tuple(leaves))
    gm = canonicalize(fx.GraphModule(root, graph, class_name="Captured"))
    return gm, list(output.args[0])


def _batch_symbol(gm: fx.GraphModule, name: str) -> sympy.Symbol:
    """The one symbol that dim 0 of every input is; a clear error when the batch is not symbolic."""
    symbols = []
    for p in (n for n in gm.graph.nodes if n.op == "placeholder"):
        size = p.meta["val"].shape[0] if p.meta["val"].dim() else None
        expr = size.node.expr if isinstance(size, torch.SymInt) else None
        if not isinstance(expr, sympy.Symbol):
            raise GraftError(
                f"{name}: input {p.name!r} has a fixed batch size ({size}); export the fragment with a "
                "dynamic batch dim, e.g. dynamic_shapes=({0: torch.export.Dim('batch')},), or pass the "
                "module itself")
        symbols.append(expr)
    if len(set(symbols)) > 1:
        raise GraftError(f"{name}: its inputs have different dynamic batch dims {sorted(map(str, set(symbols)))}; "
                         "export all inputs with one Dim('batch') for dim 0")
    if not symbols:
        raise GraftError(f"{name} takes no tensor input; a fragment reads at least one batch of rows")
    return symbols[0]


def _specs(gm: fx.GraphModule) -> list[InputSpec]:
    return [InputSpec(tuple(int(d) for d in p.meta["val"].shape[1:]), p.meta["val"].dtype, p.meta["val"].device)
            for p in gm.graph.nodes if p.op == "placeholder"]


def _functionalized(ep: ExportedProgram, name: str) -> ExportedProgram:
    """``ep.run_decompositions({})``. Torch refuses that for some programs exported with grad mode
    on (an in-place write into a view of an input: "a view was created in no_grad mode ...");
    those are exported again from their module under no_grad first, as capture exports modules."""
    try:
        return ep.run_decompositions({})
    except RuntimeError as e:
        if "view was created in no_grad mode" not in str(e):
            raise
    with torch.no_grad():
        return export_module(ep.module(), None, name).run_decompositions({})


def from_program(ep: ExportedProgram, call: Callable[..., Any], name: str) -> Captured:
    """The canonical capture of an ExportedProgram (see the module docstring)."""
    if _needs_functionalization(ep.graph):
        ep = _functionalized(ep, name)
    gm, leaves = _lift(ep, name)
    gm.meta["graft_batch"] = _batch_symbol(gm, name)
    return Captured(gm, call, _specs(gm), leaves, ep.call_spec.out_spec, name, gm.meta["graft_batch"])


def from_canonical(gm: fx.GraphModule, name: str) -> Captured:
    """A GraphModule already in canonical form (a ``split`` tail)."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    leaves, spec = pytree.tree_flatten(output.args[0], is_leaf=lambda x: isinstance(x, fx.Node))
    codegen_spec = getattr(getattr(gm.graph._codegen, "pytree_info", None), "out_spec", None)
    return Captured(gm, gm, _specs(gm), leaves, codegen_spec or spec, name, gm.meta["graft_batch"])


def capture(fragment: Any, example: Any = None, name: str = "fragment") -> Captured:
    """Bring ``fragment`` into canonical form, with its input specs and output structure.

    Raises TraceError when torch.export cannot capture it (naming the construct), GraftError when
    its inputs are unknown or its batch is not a free dim 0.
    """
    if isinstance(fragment, ExportedProgram):
        captured = from_program(fragment, fragment.module(), name)
        if example is not None:
            given = [InputSpec(tuple(t.shape[1:]), t.dtype) for t in _examples(captured.call, example, name)]
            if given != [InputSpec(s.row_shape, s.dtype) for s in captured.inputs]:
                raise GraftError(f"{name}: its example inputs {[s.describe() for s in given]} do not match the "
                                 f"inputs it was exported with {[s.describe() for s in captured.inputs]}")
        return captured
    if isinstance(fragment, fx.GraphModule) and "graft_batch" in fragment.meta:
        return from_canonical(fragment, name)
    if isinstance(fragment, torch.nn.Module):
        return from_program(export_module(fragment, example, name), fragment, name)
    raise GraftError(f"{name} is a {type(fragment).__name__}; expected an nn.Module, an fx.GraphModule "
                     "or a torch.export.ExportedProgram")
