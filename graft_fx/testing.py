"""Property-test your own fragments: hypothesis strategies for calls of a RealignedModule.

    calls(rm)                    full argument tuples for ``rm(*args)``: who is present, how many
                                 rows each (0 included), seeded random inputs
    batch_sizes(n), presence(n)  the pieces ``calls`` draws from
    random_inputs(rm, sizes)     random inputs matching ``rm.input_specs``, without hypothesis' help
    assert_close(a, e)           torch.testing.assert_close with slack for batched kernels
    assert_equivalent(rm, args)  ``graft_fx.verify.assert_equivalent``: rm(*args) against each
                                 fragment run alone; raises GraftError naming the fragment and node
    fine_tuned(model, k)         the model and k - 1 copies with perturbed weights, to test
                                 ``realign(..., share="structure")``

Typical use::

    @given(graft_fx.testing.calls(rm))
    def test_realigned(args):
        graft_fx.testing.assert_equivalent(rm, args)

The strategies read only ``rm.input_specs`` (one tuple of InputSpec per fragment: ``row_shape``,
``dtype``, ``device``), so they work on any object that has it. Importing this module needs
hypothesis (a dev dependency); without it the import raises ImportError saying how to install it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .verify import assert_close, assert_equivalent, random_rows

try:
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - exercised by a test that hides hypothesis
    raise ImportError(
        "graft_fx.testing needs hypothesis: pip install hypothesis "
        "(or pip install -e '.[dev]' in a graft_fx checkout)"
    ) from e

__all__ = ["assert_close", "assert_equivalent", "batch_sizes", "calls", "fine_tuned", "presence", "random_inputs"]


def fine_tuned(model: torch.nn.Module, k: int, scale: float = 0.02) -> list[torch.nn.Module]:
    """``model`` and ``k - 1`` deep copies (in eval mode) whose every floating parameter and
    buffer is perturbed by ``scale`` times standard normal noise, seeded by the copy's index
    (running variances kept positive): stand-ins for per-customer fine-tunes of one model."""
    import copy

    copies = [model]
    for i in range(1, k):
        m = copy.deepcopy(model)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, t in [*m.named_parameters(), *m.named_buffers()]:
                if t.is_floating_point():
                    t.add_(scale * torch.randn(t.shape, generator=g).to(t.dtype))
                    if name.endswith("running_var"):
                        t.abs_()
        copies.append(m.eval())
    return copies


def _check_count(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of fragments must be a positive int; got {n!r}")


def batch_sizes(n: int, max_rows: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    """Per-fragment batch sizes: tuples of ``n`` ints in ``0..max_rows``, shrinking towards 0.

    Raises ValueError if ``n < 1`` or ``max_rows < 0``.
    """
    _check_count(n)
    if not isinstance(max_rows, int) or max_rows < 0:
        raise ValueError(f"max_rows must be a non-negative int; got {max_rows!r}")
    return st.tuples(*[st.integers(0, max_rows)] * n)


def _at_least_one(present: list[bool]) -> list[bool]:
    return present if any(present) else [True] + present[1:]


def presence(n: int) -> st.SearchStrategy[list[bool]]:
    """Which of ``n`` fragments are present: lists of ``n`` bools with at least one True.

    Shrinks towards fragment 0 alone. Raises ValueError if ``n < 1``.
    """
    _check_count(n)
    return st.lists(st.booleans(), min_size=n, max_size=n).map(_at_least_one)


def _specs(rm: Any) -> list[tuple[Any, ...]]:
    specs = getattr(rm, "input_specs", None)
    if specs is None:
        raise TypeError(f"expected a RealignedModule (an object with input_specs); got {type(rm).__name__}")
    return [tuple(s) for s in specs]


def _fragment_inputs(specs: tuple[Any, ...], rows: int, seed: int) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """One fragment's inputs with ``rows`` rows: a tensor, or a tuple for several inputs."""
    g = torch.Generator().manual_seed(seed)
    tensors = tuple(random_rows(s, rows, g) for s in specs)
    return tensors[0] if len(tensors) == 1 else tensors


def random_inputs(rm: Any, sizes: Sequence[int | None], *, seed: int = 0) -> tuple[Any, ...]:
    """Random arguments for ``rm(*args)``: fragment f gets ``sizes[f]`` rows, or None if absent.

    Each input tensor of fragment f has shape ``(sizes[f], *spec.row_shape)``, the spec's dtype
    and device (CPU when the spec has none), drawn by ``graft_fx.verify.random_rows``: standard
    normal for floating and complex dtypes, 0 or 1 for integer dtypes, random bools for bool. A fragment with one input gets a tensor,
    one with several a tuple. Fragment f's inputs depend only on ``seed``, f and ``sizes[f]``.

    Raises TypeError if ``rm`` has no ``input_specs`` or a spec's dtype cannot be drawn, and
    ValueError if ``sizes`` does not have one entry per fragment or has a negative size.
    """
    specs = _specs(rm)
    if len(sizes) != len(specs):
        raise ValueError(f"sizes needs one entry per fragment ({len(specs)}); got {len(sizes)}")
    if any(b is not None and b < 0 for b in sizes):
        raise ValueError(f"batch sizes must be >= 0 or None; got {tuple(sizes)}")
    return tuple(
        None if b is None else _fragment_inputs(s, b, (seed * 1_000_003 + f) % 2**63)
        for f, (s, b) in enumerate(zip(specs, sizes))
    )


@st.composite
def calls(draw: st.DrawFn, rm: Any, max_rows: int = 3) -> tuple[Any, ...]:
    """Full argument tuples for ``rm(*args)``: a presence pattern (at least one fragment present),
    batch sizes in ``0..max_rows`` for the present fragments, and ``random_inputs`` under a
    drawn seed. Raises TypeError (when drawn) if ``rm`` has no ``input_specs``.
    """
    n = len(_specs(rm))
    present = draw(presence(n))
    sizes = draw(batch_sizes(n, max_rows))
    seed = draw(st.integers(0, 2**32 - 1))
    return random_inputs(rm, [b if p else None for p, b in zip(present, sizes)], seed=seed)
