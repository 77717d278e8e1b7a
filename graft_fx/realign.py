"""``realign()``: many fragments in, one RealignedModule out.

The pipeline: capture each fragment and find the role of each node (``analysis.py``), partition
all nodes into classes (``align.py``), emit one graph (``rewrite.py``), lower its patterns into
graft's kernel ops where they pay (``lowering.py``), describe it (``plan.py``) and, by default,
check it against separate execution on random rows (``verify.py``).
``RealignedModule`` checks every call's inputs against the fragments' input specs, then runs the
graph built for the fragments present in that call (cached per set). ``PaddedRealignedModule``
(``realign(..., buckets=...)``) first pads each fragment's rows up to a bucket (``buckets.py``),
so that compiled static-shape graphs see a bounded set of shapes, and drops the padding rows
from the outputs. Both compile with torch.compile; the unpadded one exports with torch.export.

It reads the fragments' own weight tensors, so in-place updates (``load_state_dict`` of a new
fine-tune, an optimizer step) reach it. Alignment compared weights by value, though: two
fragments whose weights were equal share one layer, and stacked or folded kernel arguments are
computed from the values. So every call first compares the weights' version counters with those
the alignment saw, and re-aligns when any moved. What torch.export captured stays as captured,
as in an ExportedProgram: a replaced parameter object, a new hook or a train/eval switch needs
``realign()`` again. So does an in-place update that bypasses the version counter: one through
``.data`` (``w.data.mul_(0.5)``, which counts on the ``.data`` alias only), or one of a weight made
under ``torch.inference_mode`` (an inference tensor has no version counter).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from .align import FLOPS_PER_COPIED_BYTE, NodeClass, align
from .analysis import Analysis, analyze
from .buckets import POWERS_OF_TWO, bucketed, check_buckets, output_layouts, pad_rows, padding_refusal, written_inputs
from .capture import InputSpec, fetch_attr
from .errors import GraftError
from .keys import SHARES
from .lowering import KERNELS, lower
from .plan import Plan, make_plan
from .rows import take_rows
from .rewrite import emit
from .verify import verify as _verify


class RealignedModule(nn.Module):
    """Runs n fragments as one graph: ``rm(x_1, ..., x_n) == (f_1(x_1), ..., f_n(x_n))``.

    ``x_i`` is a tensor (a tuple for a fragment with several inputs), ``None`` for an absent
    fragment (its output is None), with any batch size, 0 included. ``min_flops_per_byte``,
    ``share`` and ``kernels`` are `realign`'s. Raises GraftError for an unknown ``kernels``.
    ``buckets`` is None here; `PaddedRealignedModule` pads.

    **Compile.** ``torch.compile(rm)`` traces ``forward`` whole (``fullgraph=True`` holds): the
    checks of the inputs, the graph for the fragments present (built at trace time, see
    ``_build``) and the eager run of a batch-0 fragment. Dynamo guards on which fragments are
    absent (None) and specializes batch sizes 0 and 1, so a compiled module compiles once per
    pattern of absent, empty, one-row and larger fragments, and within a pattern keeps one graph
    for every batch size (``dynamic=True``, or the default ``dynamic=None`` from the second size
    on; a backend may still guard on size ranges, as CPU convolutions do at 16 rows). Each
    pattern is one recompilation: with more than a few fragments, raise
    ``torch._dynamo.config.recompile_limit`` (8 by default; ``fullgraph=True`` fails past it).
    Compiled code does not re-align on in-place weight updates (the check is skipped while
    compiling): after one (``weights_updated`` says), run the module once uncompiled, which
    re-aligns, and the compiled module recompiles on its next call (its guards see the new
    graphs).

    **Export.** ``torch.export.export(rm, args, dynamic_shapes={"inputs": (d_1, ..., d_n)})``:
    ``args`` has one entry per fragment (None for an absent one, which stays absent in the
    program); ``d_i`` is ``{0: Dim("b_i")}`` for a one-input fragment, a tuple of such dicts
    sharing one Dim for a fragment with several inputs, and None for an absent one. Give examples
    of 2 or more rows (export specializes a dim whose example has 0 or 1). The program runs at any
    batch size, 0 and 1 included, always through the realigned graph: it has no eager path for
    batch 0, so a fragment whose ops refuse 0 rows raises there.
    """

    buckets: tuple[int, ...] | None = None
    """The batch sizes each fragment's rows are padded up to (`PaddedRealignedModule`), or None."""

    def __init__(self, analyses: list[Analysis], min_flops_per_byte: float = FLOPS_PER_COPIED_BYTE,
                 share: str = "weights", kernels: str = "auto"):
        super().__init__()
        if kernels not in KERNELS:
            raise GraftError(f"kernels={kernels!r}: expected one of {', '.join(KERNELS)}")
        self._analyses = analyses
        self._settings = (min_flops_per_byte, share)
        self.kernels = kernels
        state = {id(t) for a in analyses for t in a.state.values()}  # updated by the fragments as they run
        self._weights = list({id(t): t for a in analyses for n in a.nodes if n.op == "get_attr"
                              for t in [fetch_attr(a.gm, n.target)]
                              if isinstance(t, torch.Tensor) and id(t) not in state
                              and not t.is_inference()}.values())  # no version counter: see the docstring
        self._written = [written_inputs(a) for a in analyses]  # input positions each writes in place
        self._align()

    def _align(self) -> None:
        """Partition the fragments' nodes into classes for the weights as they are now, and drop
        the graphs and stacked weights built for the last partition."""
        self._versions = self._weight_versions()
        self._classes, declined = align(self._analyses, *self._settings)
        self.plan: Plan = make_plan(self._analyses, self._classes, declined)
        self._class_of = {m: c for c in self._classes for m in c.members}
        self._graphs: dict[frozenset[int], fx.GraphModule] = {}
        self._differentiable: dict[frozenset[int], fx.GraphModule] = {}  # for autograd: see graph_for
        self._stacks: list = []  # weights stacked for the kernel ops, shared by the graphs
        self.graph_module = self.graph_for(frozenset(range(len(self._analyses))))

    def weights_updated(self) -> bool:
        """Whether a weight the fragments read was updated in place since the alignment (then
        ``forward`` re-aligns first; compiled, only `PaddedRealignedModule` can, whose forward
        runs eagerly, so a caller of a compiled plain module must: see `graft_fx.backend`)."""
        return self._weight_versions() != self._versions

    def _weight_versions(self) -> list[int]:
        """The version counter of every weight the fragments read (an in-place update bumps it),
        but the state they update themselves (train-mode running statistics: never shared, never
        compared by value)."""
        return [t._version for t in self._weights]

    @property
    def num_fragments(self) -> int:
        return len(self._analyses)

    @property
    def input_specs(self) -> list[tuple[InputSpec, ...]]:
        """For each fragment, the shape of one row (and dtype, device) of each input tensor."""
        return [tuple(a.captured.inputs) for a in self._analyses]

    def reference(self, f: int) -> Any:
        """Fragment ``f`` as the user gave it (an ExportedProgram's ``.module()``), run eagerly."""
        return self._analyses[f].captured.call

    def fragment_name(self, f: int) -> str:
        return self._analyses[f].captured.name

    def analysis(self, f: int) -> Analysis:
        return self._analyses[f]

    def class_of(self, f: int, node: fx.Node) -> NodeClass | None:
        return self._class_of.get((f, node))

    def graph_for(self, present: frozenset[int], lowered: bool = True) -> fx.GraphModule:
        """The realigned graph specialized to the fragments in ``present``: lowered into graft's
        kernel ops where ``kernels`` says, or, with ``lowered=False`` (`_differentiating`), one
        that autograd differentiates: on library ops only (the kernel ops are inference-only and
        read stacked copies of the weights), each fragment reading its own parameters even where
        another's are equal in value (`rewrite.emit`'s ``differentiable``)."""
        if not lowered:
            if present not in self._differentiable:
                self._differentiable[present] = emit(self._analyses, self._classes, present, differentiable=True)
            return self._differentiable[present]
        if present not in self._graphs:
            gm = emit(self._analyses, self._classes, present)
            self._graphs[present] = lower(gm, self._examples(present), self.kernels, stacks=self._stacks)
        return self._graphs[present]

    def _differentiating(self, inputs: list[Any]) -> bool:
        """Whether this call must be differentiable: grad mode on, and a weight or an input that
        requires grad (read per call: ``requires_grad_`` moves no version counter)."""
        return torch.is_grad_enabled() and (any(t.requires_grad for t in self._weights) or any(
            isinstance(x, torch.Tensor) and x.requires_grad for x in inputs))

    def _examples(self, present: frozenset[int]) -> list[torch.Tensor | None]:
        """The graph's flat inputs for ``present``: two rows of each present fragment's input
        specs (shapes, dtypes and devices for `lowering.lower` to fake), None for the others."""
        return [torch.empty((2, *spec.row_shape), dtype=spec.dtype, device=spec.device) if f in present else None
                for f, a in enumerate(self._analyses) for spec in a.captured.inputs]

    def forward(self, *inputs: Any) -> tuple[Any, ...]:
        """One output per fragment (None for an absent one), as each fragment run alone gives.
        Raises GraftError for a wrong number of inputs or an input that does not fit its
        fragment's input specs."""
        if torch.compiler.is_compiling():
            self._check_count(inputs)
        else:
            self._prepare(inputs)
        return self._run(*inputs)

    def _prepare(self, inputs: tuple[Any, ...]) -> None:
        """What a call checks eagerly before it runs (Dynamo can trace none but the count): the
        number of inputs, no input written in place by one fragment and read by another, and the
        weights as aligned (re-aligning where they were updated in place: which are equal, and
        what was stacked, may differ)."""
        self._check_count(inputs)
        self._check_aliasing(inputs)
        if self.weights_updated():
            self._align()

    def _check_aliasing(self, inputs: tuple[Any, ...]) -> None:
        """GraftError where a fragment writes into an input in place whose memory another input
        of the call also holds (one tensor passed to two fragments): run one after the other, the
        second reads what the first wrote, which one batched run cannot reproduce."""
        if not any(self._written):
            return
        held = [(f, i, t) for f, x in enumerate(inputs) if x is not None
                for i, t in enumerate(_as_tuple(x)) if isinstance(t, torch.Tensor) and t.numel()]
        for f, i, t in held:
            if i not in self._written[f]:
                continue
            for g, j, u in held:
                if (g, j) != (f, i) and u.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
                    raise GraftError(
                        f"{self.fragment_name(f)} writes into its input {i} in place, and fragment {g}'s input "
                        f"{j} is the same memory: run one after the other, the second would read the first's "
                        "writes, which one batched run cannot reproduce; pass each fragment its own tensor "
                        "(x.clone())")

    def _check_count(self, inputs: tuple[Any, ...]) -> None:
        if len(inputs) != self.num_fragments:
            raise GraftError(
                f"RealignedModule takes {self.num_fragments} inputs, one per fragment (None for an "
                f"absent fragment); got {len(inputs)}"
            )

    def _run(self, *inputs: Any) -> tuple[Any, ...]:
        """``forward`` without padding: the graph for the fragments with rows, and each
        fragment with 0 rows run alone (a graph on 0 rows could meet ops that refuse them)."""
        flat: list[Any] = []
        present: list[int] = []
        empty: dict[int, tuple[torch.Tensor, ...]] = {}
        for f, x in enumerate(inputs):
            n_inputs = len(self._analyses[f].captured.inputs)
            tensors = None if x is None else self._checked(f, x)
            if tensors is not None and tensors[0].shape[0] == 0:
                empty[f] = tensors
            elif tensors is not None:
                present.append(f)
                flat += tensors
                continue
            flat += [None] * n_inputs
        key, lowered = frozenset(present), not self._differentiating(flat)
        if present:
            _build(self, key, lowered)
        leaves = iter(self.graph_for(key, lowered)(*flat) if present else ())
        outputs = []
        for f, a in enumerate(self._analyses):
            cap = a.captured
            if f in empty:
                outputs.append(cap.call(*empty[f]))
            elif f in present:
                outputs.append(pytree.tree_unflatten([next(leaves) for _ in cap.out_leaves], cap.out_spec))
            else:
                outputs.append(None)
        return tuple(outputs)

    def _checked(self, f: int, x: Any) -> tuple[torch.Tensor, ...]:
        cap = self._analyses[f].captured
        specs = cap.inputs
        tensors = _as_tuple(x)
        if len(tensors) != len(specs):
            raise GraftError(f"fragment {f} takes {len(specs)} input tensor(s) (pass a tuple); got {len(tensors)}")
        for i, (t, spec) in enumerate(zip(tensors, specs)):
            where = f"{cap.name}, input {i}"
            if not isinstance(t, torch.Tensor):
                raise GraftError(f"{where}: expected a tensor of shape {spec.describe()}, got {type(t).__name__}")
            if t.dim() != len(spec.row_shape) + 1 or tuple(t.shape[1:]) != spec.row_shape:
                raise GraftError(f"{where}: got shape {tuple(t.shape)}, expected {spec.describe()} (any batch size)")
            if t.dtype != spec.dtype:
                raise GraftError(f"{where}: got dtype {t.dtype}, expected {spec.dtype}")
            if spec.device is not None and t.device != spec.device:
                raise GraftError(f"{where}: got a tensor on {t.device}, expected {spec.device}")
            if t.shape[0] != tensors[0].shape[0]:
                raise GraftError(f"{where}: batch size {t.shape[0]} differs from input 0's {tensors[0].shape[0]}")
        return tensors


class PaddedRealignedModule(RealignedModule):
    """A RealignedModule that pads each fragment's rows up to the next of ``buckets``.

    ``buckets`` (ascending batch sizes, ``buckets.check_buckets``): each call pads every present
    fragment's n rows up to ``buckets.bucketed(n, buckets)`` with copies of its row 0, runs the
    graph on the padded rows, and takes each output's first n rows back (along the batch dim of
    the output's ``rows.Layout``), so padding rows never reach an output. A fragment that writes
    into its input in place gets the real rows copied back into that input. Batch 0 and sizes
    above the largest bucket run unpadded. Raises GraftError for bad ``buckets`` or a fragment
    that padding would change (``buckets.padding_refusal``: a node that mixes rows or reads the
    batch size, random draws, an update of the fragment's own state).

    **Compile.** torch.compile skips the frame of ``forward``, which pads, slices back and checks
    the weights' versions eagerly, and compiles the ``_run`` it calls (``fullgraph=True``
    holds). So the compiled code only ever sees bucketed shapes: with ``dynamic=False`` it
    compiles once per mix of buckets (and of absent and empty fragments) and never again for
    other sizes within those buckets, which is what CUDA graphs (``mode="reduce-overhead"``)
    need; in-place weight updates re-align and recompile. Compile the module, not its
    ``forward`` method. torch.export does not support that skipped frame, so exporting a padded
    module raises GraftError: export the unpadded module (``realign`` without buckets).
    """

    def __init__(self, analyses: list[Analysis], min_flops_per_byte: float = FLOPS_PER_COPIED_BYTE,
                 share: str = "weights", kernels: str = "auto", buckets: Sequence[int] = POWERS_OF_TWO):
        buckets = check_buckets(buckets)
        _check_paddable(analyses, buckets)
        super().__init__(analyses, min_flops_per_byte, share, kernels)
        self.buckets = buckets
        self._out_layouts = [output_layouts(a) for a in analyses]
        self.register_forward_pre_hook(_refuse_export)

    @torch.compiler.disable(recursive=False)
    def forward(self, *inputs: Any) -> tuple[Any, ...]:
        """``RealignedModule.forward`` on padded rows (see the class docstring). Raises
        GraftError for a wrong number of inputs or an input that does not fit its specs."""
        args, rows = self._pad(inputs)
        if not any(rows):
            return self._run_eagerly(*args)
        return self._unpad(inputs, args, self._run(*args), rows)

    @torch.compiler.disable
    def _run_eagerly(self, *inputs: Any) -> tuple[Any, ...]:
        """A call without rows (every fragment absent or empty), run eagerly: compiled, its frame
        of ``_run`` would hold no tensor op, and Dynamo would then skip ``_run``'s code for good,
        so every later call would run eagerly too."""
        return self._run(*inputs)

    @torch.compiler.disable
    def _pad(self, inputs: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[int | None]]:
        """The inputs padded to their buckets, and each fragment's real batch size (None for an
        absent one), after `_prepare`."""
        self._prepare(inputs)
        rows = [None if x is None else self._checked(f, x)[0].shape[0] for f, x in enumerate(inputs)]
        return tuple(x if n is None else _padded_input(x, bucketed(n, self.buckets)) for x, n in zip(inputs, rows)), rows

    @torch.compiler.disable
    def _unpad(self, inputs: tuple[Any, ...], padded: tuple[Any, ...], outputs: tuple[Any, ...],
               rows: list[int | None]) -> tuple[Any, ...]:
        """Each padded fragment's outputs cut back to its first ``rows[f]`` rows (along each
        output's batch dim); the inputs it wrote into in place get their real rows back from the
        padded copies, which took the writes."""
        result = []
        for f, (x, out, n) in enumerate(zip(inputs, outputs, rows)):
            if n is None or bucketed(n, self.buckets) == n:
                result.append(out)
                continue
            for i in self._written[f]:
                _as_tuple(x)[i].copy_(_as_tuple(padded[f])[i][:n])
            leaves, spec = pytree.tree_flatten(out)
            result.append(pytree.tree_unflatten(
                [leaf if layout is None else take_rows(leaf, layout, 0, n)
                 for leaf, layout in zip(leaves, self._out_layouts[f])], spec))
        return tuple(result)


def _refuse_export(module: PaddedRealignedModule, inputs: tuple[Any, ...]) -> None:
    """A forward pre-hook: torch.export cannot trace the padded forward (torch.compile skips its
    frame, which export does not support), so say what to export instead."""
    if torch.compiler.is_exporting():
        raise GraftError(f"torch.export of a padded realigned module (buckets={list(module.buckets)}) is not "
                         "supported: export the module realigned without buckets, with a dynamic batch per "
                         "fragment, or with static shapes at the bucket sizes")


@torch.compiler.assume_constant_result
def _build(rm: RealignedModule, present: frozenset[int], lowered: bool) -> bool:
    """Build ``rm``'s graph for the fragments in ``present`` (``graph_for``). Dynamo cannot trace
    building an fx graph (torch.fx is on its skip list, so it would break the graph), so it calls
    this at trace time, as a constant; the traced code then reads the graph from the cache.
    Which graph a call needs is decided by which inputs are None or empty and by grad mode and
    the weights' requires_grad, all of which Dynamo guards."""
    rm.graph_for(present, lowered)
    return True


def _as_tuple(x: Any) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _padded_input(x: Any, rows: int) -> Any:
    """One fragment's input (a tensor, or a tuple of them) padded to ``rows`` rows (``pad_rows``)."""
    if isinstance(x, torch.Tensor):
        return pad_rows(x, rows)
    return tuple(pad_rows(t, rows) for t in x)


def _check_paddable(analyses: list[Analysis], buckets: tuple[int, ...]) -> None:
    """Padding must not change any fragment's outputs: raise GraftError naming the first fragment
    and node where it would (``buckets.padding_refusal``)."""
    for a in analyses:
        reason = padding_refusal(a)
        if reason is not None:
            raise GraftError(f"buckets={list(buckets)}: {a.captured.name} cannot be padded: {reason}; padding "
                             "is exact only for fragments whose rows are independent: realign with buckets=None")


def _placement(a: Analysis) -> tuple[frozenset, frozenset]:
    """The devices and floating dtypes a fragment's weights and inputs live in."""
    tensors = [t for n in a.nodes if n.op == "get_attr" for t in [fetch_attr(a.gm, n.target)]
               if isinstance(t, torch.Tensor)]
    devices = {t.device for t in tensors} | {s.device for s in a.captured.inputs if s.device is not None}
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    dtypes |= {s.dtype for s in a.captured.inputs if s.dtype.is_floating_point}
    return frozenset(devices), frozenset(dtypes)


def _check_uniform(analyses: list[Analysis]) -> None:
    """All fragments must live on the same devices and compute in the same floating dtypes.

    A fragment with no weights and no recorded input device (a weightless tail from ``split``)
    has no placement of its own and agrees with any.
    """
    placements = [_placement(a) for a in analyses]
    for i, what, one in ((0, "devices", "device"), (1, "floating dtypes", "dtype")):
        if len({p[i] for p in placements if p[i]}) > 1:
            listing = ", ".join(f"fragment {f}: {sorted(map(str, p[i]))}" for f, p in enumerate(placements))
            raise GraftError(f"fragments mix {what} ({listing}); move all fragments and their inputs "
                             f"to one {one} before realigning")


def _check_state(analyses: list[Analysis]) -> None:
    """No tensor may be updated in place by two fragments (the same module passed twice, or two
    ``split`` tails of one model that both update a buffer): run one after the other, the second
    reads what the first wrote, which one batched run cannot reproduce."""
    owner: dict[int, tuple[int, str]] = {}
    for f, a in enumerate(analyses):
        for name, t in a.state.items():
            if id(t) in owner and owner[id(t)][0] != f:
                g, other = owner[id(t)]
                raise GraftError(
                    f"fragments {g} and {f} both update the buffer {other!r} in place (one tensor: the same "
                    f"module twice, or two tails of one model); realigned, neither would see the other's "
                    f"update as it does when they run one after the other. Give each fragment its own copy "
                    f"(copy.deepcopy), or use eval mode where only training updates it")
            owner.setdefault(id(t), (f, name))


def realign(fragments: Sequence[Any], example_inputs: Sequence[Any] | None = None, *,
            verify: bool = True, min_flops_per_byte: float = FLOPS_PER_COPIED_BYTE,
            kernels: str = "auto", share: str = "weights",
            buckets: Sequence[int] | None = None) -> RealignedModule:
    """Merge ``fragments`` into one RealignedModule that runs their shared layers once, batched.

    ``fragments`` are nn.Modules, fx GraphModules or ExportedPrograms, each captured with
    torch.export at the ATen level (``capture.py``). Input shapes come from the fragments
    (``graft_fx.split`` tails and ExportedPrograms record them) or from ``example_inputs``: one
    example per fragment (a tensor, a tuple, or None), batch dim 0 of any size.

    With ``verify=True`` (the default) every fragment runs eagerly and the realigned module runs
    on random rows at uneven batch sizes (1 included), and any output that differs beyond
    ``torch.testing.assert_close``'s tolerance raises GraftError naming the fragment and the first
    differing node. A shared region is kept only where it batches at least
    ``min_flops_per_byte`` FLOPs per row for each byte per row its gathers copy (the cost rule,
    ``align.FLOPS_PER_COPIED_BYTE``); 0 shares every region that can be shared. ``kernels``
    chooses where the graphs call graft's fused kernel ops (``lowering.py``): ``"auto"`` where
    they are expected to be faster (CUDA with Triton, large enough layers), ``"triton"``
    wherever a pattern matches (the ops run their torch references where Triton cannot run),
    ``"torch"`` never. ``share="structure"`` also batches layers whose structure matches while
    their weights differ (fine-tuned copies of one model: ``keys.STRUCTURAL``), each fragment's
    rows with its own weights; the default ``"weights"`` shares a layer only where the weights
    are equal too. ``buckets`` (ascending batch sizes such as ``buckets.POWERS_OF_TWO``, or None)
    returns a ``PaddedRealignedModule``, which pads each call's fragments up to the next bucket
    for static-shape executors; it refuses fragments that padding would change
    (``buckets.padding_refusal``: a node that mixes rows or uses the batch size, random draws,
    an update of the fragment's own state). Raises GraftError
    (TraceError) for fragments that cannot be captured or served: see ``capture`` and the messages.
    """
    if isinstance(fragments, (torch.nn.Module, torch.export.ExportedProgram)) or not hasattr(fragments, "__iter__"):
        raise GraftError(f"realign() takes a list of fragments; got one {type(fragments).__name__}: "
                         "pass [fragment] (and [example])")
    fragments = list(fragments)
    if not fragments:
        raise GraftError("realign() needs at least one fragment; got an empty list")
    if share not in SHARES:
        raise GraftError(f"share={share!r}: expected one of {', '.join(SHARES)}")
    if buckets is not None:
        buckets = check_buckets(buckets)  # before the fragments are captured
    examples = list(example_inputs) if example_inputs is not None else [None] * len(fragments)
    if len(examples) != len(fragments):
        raise GraftError(f"realign() got {len(fragments)} fragments but {len(examples)} example inputs")
    analyses = [
        analyze(fragment, example, f"fragment {i} ({type(fragment).__name__})")
        for i, (fragment, example) in enumerate(zip(fragments, examples))
    ]
    _check_uniform(analyses)
    _check_state(analyses)
    if buckets is None:
        rm = RealignedModule(analyses, min_flops_per_byte, share, kernels)
    else:
        rm = PaddedRealignedModule(analyses, min_flops_per_byte, share, kernels, buckets)
    if verify:
        _verify(rm)
    return rm
