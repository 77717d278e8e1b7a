"""The guard behind ``realign(..., verify=True)``: realigned execution against separate execution.

Analysis proves separability from a rule table; this checks the whole pipeline (capture included)
on data. ``assert_equivalent`` runs every present fragment on its own, exactly as the user gave
it, and the realigned module on the same inputs, and compares each output with
``assert_close`` below. On a
mismatch it looks for the first node of the fragment's captured graph whose value differs
between the two runs and names it, so the error points at the layer the analysis got wrong.
Inputs are cloned for each run: a fragment that mutates its input in place must not feed the
other run a mutated tensor. State is handled the same way: the buffers the fragments update in
place (their write-back targets, such as a train-mode batch norm's running statistics) are saved
first, every run starts from them, and the updated buffers are compared too; ``verify`` puts them
back afterwards, so that ``realign`` leaves the user's models as it found them.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .capture import InputSpec, layer_name
from .errors import GraftError
from .rows import take_rows
from .separable import GATHERABLE

if TYPE_CHECKING:
    from .realign import RealignedModule


def random_rows(spec: InputSpec, rows: int, generator: torch.Generator) -> torch.Tensor:
    """``rows`` random rows of ``spec``: normal floats, integers in [0, 2), random bools."""
    shape = (rows, *spec.row_shape)
    device = spec.device or "cpu"
    if spec.dtype.is_floating_point or spec.dtype.is_complex:
        wide = torch.complex128 if spec.dtype.is_complex else torch.float64  # randn has no fp16 on CPU
        return torch.randn(shape, generator=generator, dtype=wide).to(spec.dtype).to(device)
    if spec.dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool().to(device)
    return torch.randint(0, 2, shape, generator=generator, dtype=spec.dtype).to(device)


DEFAULT_TOLERANCES = {  # (rtol, atol): torch.testing.assert_close's documented defaults
    torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7),
}
SCALE_RTOL = 8
"""How many of the dtype's default relative tolerances an element may be off, measured against
the largest magnitude in its output tensor."""


def assert_close(actual: Any, expected: Any, *, rtol: float | None = None, atol: float | None = None) -> None:
    """``torch.testing.assert_close`` with a tolerance that fits batched kernels, NaN-aware.

    Eager PyTorch itself gives a sample different bits at different batch sizes (convolution and
    matrix-product kernels block and sum differently), so an element near zero in a large output
    can be off by more than its own relative tolerance. Unless ``rtol``/``atol`` are given, each
    tensor is compared with ``torch.testing``'s default tolerances for its dtype plus an absolute
    slack of ``SCALE_RTOL`` default relative tolerances of the output's largest *finite*
    magnitude (about 5e-4 on a float32 output of magnitude 50; see ``finite_scale``). A real
    re-alignment error moves values by their own size and is far outside that.

    NaN compares equal to NaN in the same place (a ``log`` of a negative input gives NaN in both
    runs), but a NaN where ``expected`` holds a number, or a number where it holds NaN, is a
    difference; infinities must match in sign and place. Raises AssertionError like
    ``torch.testing``.
    """
    if rtol is not None or atol is not None:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, check_device=False)
        return
    a_leaves, a_spec = pytree.tree_flatten(actual)
    e_leaves, e_spec = pytree.tree_flatten(expected)
    if a_spec != e_spec:
        raise AssertionError(f"output structures differ: {a_spec} against {e_spec}")
    for a, e in zip(a_leaves, e_leaves):
        if isinstance(e, torch.Tensor) and e.is_floating_point() and e.numel():
            default_rtol, default_atol = DEFAULT_TOLERANCES.get(e.dtype, (1.3e-6, 1e-5))
            slack = SCALE_RTOL * default_rtol * finite_scale(e)
            torch.testing.assert_close(a, e, rtol=default_rtol, atol=default_atol + slack, equal_nan=True,
                                       check_device=False)
        else:
            torch.testing.assert_close(a, e, equal_nan=True, check_device=False)


def finite_scale(t: torch.Tensor) -> float:
    """The largest magnitude among ``t``'s finite elements, as a Python float; 0.0 when it has
    none. A NaN or inf in an output must not make the tolerance NaN or infinite: NaN would make
    ``torch.testing`` raise RuntimeError instead of comparing, inf would accept any difference."""
    magnitudes = t.detach().abs()
    finite = magnitudes[torch.isfinite(magnitudes)]
    return finite.max().item() if finite.numel() else 0.0


def _clone(inputs: Sequence[Any]) -> list[Any]:
    return [pytree.tree_map_only(torch.Tensor, torch.clone, x) for x in inputs]


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def state(rm: "RealignedModule") -> dict[int, dict[str, torch.Tensor]]:
    """The tensors each fragment updates in place (``Analysis.state``), by attribute name."""
    return {f: rm.analysis(f).state for f in range(rm.num_fragments)}


@contextlib.contextmanager
def restored(tensors: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Saves ``tensors``' values; yields the copies; puts the values back on leaving."""
    saved = [t.detach().clone() for t in tensors]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for t, v in zip(tensors, saved):
                t.copy_(v)


def assert_equivalent(rm: "RealignedModule", inputs: Sequence[Any], *, rtol: float | None = None,
                      atol: float | None = None) -> None:
    """Check ``rm(*inputs)`` against running each fragment separately on its input.

    ``inputs`` holds one entry per fragment, as ``rm`` takes them (a tensor, a tuple, or None for
    an absent fragment). Every run starts from the same state: each fragment alone, then ``rm``;
    the buffers a fragment updates in place (no two fragments update one tensor: ``realign``
    refuses that) must end as its own run left them, and stay as ``rm`` leaves them. A fragment
    that draws random numbers (dropout in training mode) cannot be compared: a warning names it. Raises GraftError naming
    the fragment and the first differing node, or the buffer.
    """
    owned = state(rm)
    tensors = list({id(t): t for ts in owned.values() for t in ts.values()}.values())

    def reset() -> None:
        with torch.no_grad():
            for t, v in zip(tensors, start):
                t.copy_(v)

    expected, after = {}, {}
    with restored(tensors) as start:
        for f, x in enumerate(inputs):
            if x is not None:
                reset()
                expected[f] = rm.reference(f)(*_clone(_as_tuple(x)))
                after[f] = {name: t.detach().clone() for name, t in owned[f].items()}
    actual = rm(*_clone(inputs))
    for f, x in enumerate(inputs):
        if x is None:
            continue
        random = rm.analysis(f).random
        if random:
            warnings.warn(f"{rm.fragment_name(f)} draws random numbers ({layer_name(random[0])}): "
                          "its outputs differ from run to run, so they are not compared", stacklevel=2)
            continue
        try:
            assert_close(actual[f], expected[f], rtol=rtol, atol=atol)
        except AssertionError as e:
            with restored(tensors):
                where = _first_difference(rm, inputs, f, rtol, atol, reset)
            raise GraftError(f"realigned {rm.fragment_name(f)} differs from running it "
                             f"alone: {where}; {str(e).splitlines()[0]}") from e
        for name, value in after[f].items():
            try:
                assert_close(owned[f][name], value, rtol=rtol, atol=atol)
            except AssertionError as e:
                raise GraftError(f"realigned {rm.fragment_name(f)} leaves its buffer {name} "
                                 f"other than running it alone does: {str(e).splitlines()[0]}") from e


def _differs(a: Any, b: Any, rtol: float | None, atol: float | None) -> bool:
    try:
        assert_close(a, b, rtol=rtol, atol=atol)
        return False
    except (AssertionError, TypeError, ValueError, RuntimeError):
        return True


def _first_difference(rm: "RealignedModule", inputs: Sequence[Any], f: int, rtol, atol,
                      reset: Callable[[], None]) -> str:
    """The first node of fragment ``f``'s graph whose realigned value differs from its own (both
    runs start from the state ``reset`` restores)."""
    analysis = rm.analysis(f)
    reset()
    own = _values(analysis.gm, _clone(_as_tuple(inputs[f])))
    present = frozenset(i for i, x in enumerate(inputs) if x is not None and _as_tuple(x)[0].shape[0] > 0)
    if f not in present:
        return "it ran on its own (no rows), so its capture differs from eager execution"
    gm = rm.graph_for(present)
    flat = [t for i, x in enumerate(inputs) for t in (_as_tuple(_clone([x])[0]) if i in present
                                                    else [None] * len(rm.input_specs[i]))]
    reset()
    realigned = _values(gm, flat)
    names = gm.meta["graft_values"]
    for node in analysis.nodes:
        verdict = analysis.verdicts[node]
        cls = rm.class_of(f, node)
        if cls is None or cls.index not in names or verdict.role not in GATHERABLE:
            continue
        value = realigned[names[cls.index]]
        if len(cls.members) > 1:
            group = [i for i in cls.fragments if i in present]
            start = sum(_as_tuple(inputs[i])[0].shape[0] for i in group[: group.index(f)])
            value = take_rows(value, verdict.layout, start, _as_tuple(inputs[f])[0].shape[0])
        if _differs(value, own[node.name], rtol, atol):
            return f"first differing node: {layer_name(node)} [{node.name}], role {verdict.role.value}"
    return "no single node differs; its captured graph may differ from what eager runs"


def _values(gm: fx.GraphModule, args: list[Any]) -> dict[str, Any]:
    interpreter = fx.Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(*args)
    return {n.name: v for n, v in interpreter.env.items()}


def _runs_alone(rm: "RealignedModule", inputs: list[Any]) -> bool:
    try:
        for f, x in enumerate(inputs):
            rm.reference(f)(*_clone(_as_tuple(x)))
        return True
    except Exception:  # noqa: BLE001 - the fragment itself refuses these rows
        return False


def verify(rm: "RealignedModule", seed: int = 0) -> None:
    """Run ``assert_equivalent`` on random rows at uneven batch sizes (1, 2, 3, 1, ...).

    A fragment that cannot run on one row by itself (batch norm with batch statistics raises
    there) is checked at 2, 3, 4, 2, ... rows instead. The buffers the fragments update in place
    are put back afterwards: checking changes no model.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = list({id(t): t for ts in state(rm).values() for t in ts.values()}.values())
    with torch.no_grad(), restored(tensors):
        for smallest in (1, 2):
            inputs = []
            for f, specs in enumerate(rm.input_specs):
                rows = tuple(random_rows(s, smallest + f % 3, generator) for s in specs)
                inputs.append(rows if len(rows) > 1 else rows[0])
            if smallest == 2 or _runs_alone(rm, inputs):
                assert_equivalent(rm, inputs)
                return
