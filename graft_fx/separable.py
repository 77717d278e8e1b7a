"""The batch-separability rule table, and the role each node plays in re-alignment.

An op is *batch-separable* when row i of its output depends only on row i of its inputs (and on
constants). Such ops give the same rows whether they run on one fragment's batch or on the rows
of several fragments concatenated, so re-alignment may share them. Everything else stays in its
fragment's private part.

The table is data (in the style of tinygrad's rewrite rules): each op name or module type maps to
a ``Rule`` whose ``check`` returns None when the op, with these arguments, is separable, or a
reason why not. The facts from ``rows.py`` do half the work: a reshape or an expand whose output
keeps the batch in dim 0 at two batch sizes is separable by construction, while one that hard-codes
the batch size fails that test. The checks here cover what shapes cannot show: which dim a
reduction, softmax or concatenation runs over, train-mode layers, and ops that permute rows.
``keeps_rows`` marks ops that are not separable but keep exactly their input's rows (batch norm in
training mode, softmax over dim 0): they stay private, yet their output may still be concatenated
with other fragments' rows further down. Ops missing from the table are never shared, and neither
is anything downstream of them that cannot be proven to keep the batch rows.

Names cover torch functions, ``torch.nn.functional``, ``operator``, Tensor methods and the aten
ops of exported programs; they agree on argument order for every entry used here (``input``
first, then the op's own arguments), so one table serves all three graph dialects.
"""

from __future__ import annotations

import builtins
import enum
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .rows import Facts, Kind

_UNKNOWN = object()


class Role(enum.Enum):
    INPUT = "input"
    SHARED = "shared"
    PRIVATE_ROWS = "private, keeps rows"
    PRIVATE = "private"
    CONST = "const"
    FOLDED = "folded"


GATHERABLE = (Role.INPUT, Role.SHARED, Role.PRIVATE_ROWS)


@dataclass(frozen=True)
class Verdict:
    role: Role
    reason: str = ""


@dataclass
class Site:
    """One node seen by a rule: its arguments, their facts, and its module if any."""

    node: fx.Node
    facts: dict[fx.Node, Facts]
    module: nn.Module | None

    def arg(self, index: int, name: str | None = None, default: Any = None) -> Any:
        if index < len(self.node.args):
            return self.node.args[index]
        return self.node.kwargs.get(name, default) if name else default

    def literal(self, index: int, name: str | None = None, default: Any = None) -> Any:
        """The argument's value when it is known at build time, else ``_UNKNOWN``."""

        def value(a: Any) -> Any:
            if isinstance(a, fx.Node):
                f = self.facts[a]
                return f.scalar if f.kind is Kind.SCALAR else _UNKNOWN
            if isinstance(a, (list, tuple)):
                parts = [value(x) for x in a]
                return _UNKNOWN if any(p is _UNKNOWN for p in parts) else type(a)(parts)
            return a

        return value(self.arg(index, name, default))

    def rows_args(self) -> list[tuple[int, fx.Node]]:
        """(position in args, node) for every argument that carries batch rows."""
        found = []
        for i, a in enumerate(self.node.args):
            for n in _nodes_in(a):
                if self.facts[n].kind is Kind.ROWS:
                    found.append((i, n))
        found += [(-1, n) for a in self.node.kwargs.values() for n in _nodes_in(a) if self.facts[n].kind is Kind.ROWS]
        return found

    @property
    def ndim(self) -> int:
        """Rank of the first rows-carrying tensor argument."""
        for _, n in self.rows_args():
            v = self.facts[n].value
            if isinstance(v, torch.Tensor):
                return v.dim()
        return 0

    @property
    def out_ndim(self) -> int:
        v = self.facts[self.node].value
        return v.dim() if isinstance(v, torch.Tensor) else 0


def _nodes_in(a: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(a, found.append)
    return found


Check = Callable[[Site], "str | None"]


@dataclass(frozen=True)
class Rule:
    check: Check
    keeps_rows: bool = False


# --- checks: each returns None when separable, else the reason ------------------------------


def always(site: Site) -> str | None:
    return None


def _norm(dim: Any, ndim: int) -> Any:
    return dim + ndim if isinstance(dim, int) and dim < 0 else dim


def _touches_batch(dims: Any, ndim: int, what: str) -> str | None:
    if dims is _UNKNOWN:
        return f"{what} is not known when the graph is built"
    if dims is None:
        return f"{what} covers every dim, the batch dim 0 included"
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    if any(_norm(d, ndim) == 0 for d in dims):
        return f"{what} includes dim 0, the batch"
    return None


def over_dims(index: int, name: str, default: Any = None, rank_of_output: bool = False) -> Check:
    """The op works along ``dims``; separable unless they include the batch dim."""

    def check(site: Site) -> str | None:
        ndim = site.out_ndim if rank_of_output else site.ndim
        return _touches_batch(site.literal(index, name, default), ndim, f"its dim argument '{name}'")

    return check


def flag_false(index: int, name: str, default: Any, meaning: str) -> Check:
    """Separable only when a boolean argument (``training=``) is literally False."""

    def check(site: Site) -> str | None:
        value = site.literal(index, name, default)
        return None if value is False else f"it runs with {name}={value!r}: {meaning}"

    return check


def weights_constant(*positions: int) -> Check:
    """Only the arguments at ``positions`` may carry rows; the rest are weights."""

    def check(site: Site) -> str | None:
        stray = [n.name for i, n in site.rows_args() if i not in positions]
        return f"its weight arguments {stray} depend on the batch" if stray else None

    return check


def both(*checks: Check) -> Check:
    def check(site: Site) -> str | None:
        return next((r for r in (c(site) for c in checks) if r is not None), None)

    return check


def batched_operands(site: Site) -> str | None:
    """matmul-like: fine with constant operands, or with per-sample (rank >= 3) batched ones."""
    rows = site.rows_args()
    if len(rows) <= 1:
        return None
    low = [n.name for _, n in rows if site.facts[n].value.dim() < 3]
    return f"it multiplies rows of {low} with each other across the batch" if low else None


def flatten_check(site: Site) -> str | None:
    start = site.literal(1, "start_dim", 0)
    if start is _UNKNOWN or _norm(start, site.ndim) < 1:
        return "it flattens the batch dim 0 into the others"
    return None


def permute_check(site: Site) -> str | None:
    dims = site.literal(1, "dims")
    if isinstance(dims, int):  # x.permute(0, 2, 1): dims spread over the arguments
        dims = tuple(site.literal(i) for i in range(1, len(site.node.args)))
    if dims is _UNKNOWN or _UNKNOWN in dims or _norm(dims[0], site.ndim) != 0:
        return "it moves the batch dim away from dim 0"
    return None


def transpose_check(site: Site) -> str | None:
    return _touches_batch([site.literal(1, "dim0"), site.literal(2, "dim1")], site.ndim, "the swapped dims")


def unsqueeze_check(site: Site) -> str | None:
    return _touches_batch(site.literal(1, "dim"), site.out_ndim, "the new dim")


def squeeze_check(site: Site) -> str | None:
    dim = site.literal(1, "dim")
    if dim is None:
        return "squeeze() without a dim removes the batch dim when the batch has one row"
    return _touches_batch(dim, site.ndim, "the squeezed dim")


def getitem_check(site: Site) -> str | None:
    """Indexing a tuple is structural; indexing a tensor must leave dim 0 whole."""
    container = site.arg(0)
    if not isinstance(site.facts[container].value, torch.Tensor):
        return None
    index = site.arg(1)
    first = index[0] if isinstance(index, tuple) and index else index
    if isinstance(first, slice) and first == slice(None):
        return None
    return "it indexes the batch dim 0"


def pad_check(site: Site) -> str | None:
    pad = site.literal(1, "pad")
    if pad is _UNKNOWN or len(pad) // 2 >= site.ndim:
        return "it pads the batch dim 0"
    return None


def max_min_check(site: Site) -> str | None:
    other = site.arg(1, "other")
    if isinstance(other, fx.Node) and site.facts[other].is_tensor:
        return None  # torch.max(a, b): elementwise
    return over_dims(1, "dim")(site)


_SAFE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "mT", "real", "imag"}


def getattr_check(site: Site) -> str | None:
    return None if site.arg(1) in _SAFE_ATTRIBUTES else f"attribute {site.arg(1)!r} is not known to keep rows"


def module_eval(site: Site) -> str | None:
    if site.module.training:
        return f"{type(site.module).__name__} in training mode mixes or randomizes the rows of a batch"
    return None


def module_dim(site: Site) -> str | None:
    return _touches_batch(site.module.dim, site.ndim, f"{type(site.module).__name__}.dim")


def module_flatten(site: Site) -> str | None:
    return None if _norm(site.module.start_dim, site.ndim) >= 1 else "it flattens the batch dim 0"


def module_batch_first(site: Site) -> str | None:
    if not getattr(site.module, "batch_first", False):
        return f"{type(site.module).__name__} has batch_first=False: its batch is not dim 0"
    return module_eval(site)


def module_running_stats(site: Site) -> str | None:
    return module_eval(site) if site.module.track_running_stats else None


ELEMENTWISE = Rule(always)
ROW_OP = Rule(weights_constant(0))

ELEMENTWISE_NAMES = """
abs neg exp log log1p sqrt rsqrt sin cos tanh sigmoid relu relu_ relu6 gelu silu mish elu selu celu
leaky_relu hardtanh hardswish hardsigmoid softplus softsign erf sign square reciprocal logical_not
add sub mul div truediv floordiv true_divide pow mod fmod remainder maximum minimum clamp clamp_min
clamp_max where masked_fill lt le gt ge eq ne and_ or_ logical_and logical_or bitwise_and bitwise_or
contiguous clone detach to float half bfloat16 double type type_as zeros_like ones_like full_like
view reshape view_as reshape_as _unsafe_view expand expand_as repeat alias lift_fresh_copy
zeros ones full new_zeros new_ones new_full addcmul addcdiv lerp
size dim sym_size sym_numel _assert _assert_scalar _assert_async
""".split()

ROW_OP_NAMES = """
conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d convolution _convolution
linear layer_norm native_layer_norm group_norm native_group_norm instance_norm rms_norm
max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices
avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
_adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
interpolate upsample upsample_nearest2d upsample_bilinear2d pixel_shuffle pixel_unshuffle embedding
_native_batch_norm_legit_no_training
""".split()

FUNCTION_RULES: dict[str, Rule] = {
    **{n: ELEMENTWISE for n in ELEMENTWISE_NAMES},
    **{n: ROW_OP for n in ROW_OP_NAMES},
    "getitem": Rule(getitem_check),
    "getattr": Rule(getattr_check),
    "batch_norm": Rule(both(weights_constant(0), flag_false(5, "training", False, "batch statistics mix rows")), keeps_rows=True),
    "dropout": Rule(flag_false(2, "training", True, "random masks differ per run"), keeps_rows=True),
    "addmm": Rule(weights_constant(1)),
    "matmul": Rule(batched_operands),
    "bmm": Rule(batched_operands),
    "scaled_dot_product_attention": Rule(batched_operands),
    "softmax": Rule(over_dims(1, "dim"), keeps_rows=True),
    "log_softmax": Rule(over_dims(1, "dim"), keeps_rows=True),
    "_softmax": Rule(over_dims(1, "dim"), keeps_rows=True),
    "_log_softmax": Rule(over_dims(1, "dim"), keeps_rows=True),
    "cumsum": Rule(over_dims(1, "dim"), keeps_rows=True),
    "cumprod": Rule(over_dims(1, "dim"), keeps_rows=True),
    "flip": Rule(over_dims(1, "dims"), keeps_rows=True),
    "normalize": Rule(both(weights_constant(0), over_dims(2, "dim", 1))),
    **{n: Rule(over_dims(1, "dim")) for n in "mean sum amax amin prod std var logsumexp argmax argmin all any norm".split()},
    "max": Rule(max_min_check),
    "min": Rule(max_min_check),
    **{n: Rule(over_dims(1, "dim", 0)) for n in ("cat", "concat", "concatenate", "unbind", "select", "slice", "narrow")},
    **{n: Rule(over_dims(2, "dim", 0)) for n in ("chunk", "split", "tensor_split", "split_with_sizes")},
    "stack": Rule(over_dims(1, "dim", 0, rank_of_output=True)),
    "unflatten": Rule(over_dims(1, "dim")),
    "flatten": Rule(flatten_check),
    "permute": Rule(permute_check),
    "transpose": Rule(transpose_check),
    "swapaxes": Rule(transpose_check),
    "unsqueeze": Rule(unsqueeze_check),
    "squeeze": Rule(squeeze_check),
    "pad": Rule(pad_check),
}

MODULE_RULES: dict[type, Rule] = {
    **{t: ELEMENTWISE for t in (
        nn.Identity, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.SELU, nn.CELU,
        nn.LeakyReLU, nn.PReLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
        nn.Softplus, nn.Softsign)},
    **{t: ROW_OP for t in (
        nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
        nn.Linear, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.Embedding,
        nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
        nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle,
        nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
        nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d)},
    nn.Bilinear: Rule(weights_constant(0, 1)),
    **{t: Rule(module_eval, keeps_rows=True) for t in (
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
        nn.Dropout3d, nn.AlphaDropout)},
    **{t: Rule(module_running_stats, keeps_rows=True) for t in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)},
    nn.Softmax: Rule(module_dim, keeps_rows=True),
    nn.LogSoftmax: Rule(module_dim, keeps_rows=True),
    nn.Flatten: Rule(module_flatten),
    nn.MultiheadAttention: Rule(module_batch_first, keeps_rows=True),
    nn.TransformerEncoderLayer: Rule(module_batch_first, keeps_rows=True),
}

_NAMESPACES = (torch, F, operator, builtins, torch.Tensor)


def op_name(node: fx.Node) -> str | None:
    """The table name of a call_function / call_method target, or None if it is not a known op.

    A function counts only when it *is* the object of that name in torch, torch.nn.functional,
    operator or builtins (a user's own ``relu`` does not), or an aten op.
    """
    target = node.target
    if node.op == "call_method":
        return target
    if isinstance(target, torch._ops.OpOverload):
        return target._opname if target.namespace == "aten" else None
    name = getattr(target, "__name__", None)
    if name and any(getattr(ns, name, None) is target for ns in _NAMESPACES):
        return name.rstrip("_") if name in ("and_", "or_") else name
    return None


def describe(node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return f"{type(module).__name__} ({node.target})"
    name = op_name(node)
    return name if name else getattr(node.target, "__name__", str(node.target))


def _rule(node: fx.Node, module: nn.Module | None) -> Rule | None:
    if module is not None:
        return MODULE_RULES.get(type(module))
    name = op_name(node)
    return FUNCTION_RULES.get(name) if name else None


def _is_assert(node: fx.Node) -> bool:
    return node.op == "call_function" and op_name(node) in ("_assert", "_assert_scalar", "_assert_async")


def roles(gm: fx.GraphModule, facts: dict[fx.Node, Facts]) -> dict[fx.Node, Verdict]:
    """The role of every node, decided in graph order from its facts, rule and inputs."""
    verdicts: dict[fx.Node, Verdict] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        if node.op == "placeholder":
            verdicts[node] = Verdict(Role.INPUT)
            continue
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        verdicts[node] = _verdict(node, module, facts, verdicts)
    return verdicts


def _verdict(node: fx.Node, module: nn.Module | None, facts: dict[fx.Node, Facts], verdicts: dict[fx.Node, Verdict]) -> Verdict:
    f = facts[node]
    what = describe(node, module)
    rule = _rule(node, module)
    if node.op == "get_attr":
        return Verdict(Role.CONST) if f.kind is Kind.CONST else Verdict(Role.PRIVATE, f"{what}: not a tensor constant")
    unproven = [a.name for a in node.all_input_nodes if verdicts[a].role is Role.PRIVATE]
    if rule is None:
        return Verdict(Role.PRIVATE, f"{what}: not in the batch-separability rule table")
    if unproven:
        return Verdict(Role.PRIVATE, f"{what}: its input {unproven[0]} is private and not proven to keep the batch rows")
    if node.is_impure() and not _is_assert(node):
        return Verdict(Role.PRIVATE, f"{what}: has side effects")
    if f.kind is Kind.CONST:
        return Verdict(Role.CONST)
    if f.kind is Kind.SCALAR:
        return Verdict(Role.FOLDED)
    reason = rule.check(Site(node, facts, module))
    if f.kind is Kind.OTHER:
        return Verdict(Role.PRIVATE, f"{what}: {reason or 'its output does not keep the batch in dim 0'}")
    if reason is None:
        return Verdict(Role.SHARED)
    return Verdict(Role.PRIVATE_ROWS if rule.keeps_rows else Role.PRIVATE, f"{what}: {reason}")
