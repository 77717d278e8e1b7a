"""Reach, measured: real torchvision and timm classifiers cut at three depths, their tails realigned.

Each model is built with random weights in eval mode; ``benchmarks/bench_coverage.py`` builds it,
picks the cuts and defines the calls, so that the benchmark and this test judge the same cases
(see its docstring; constant-initialised parameters are randomised so that no branch vanishes).
The model is cut at the three cut points nearest to 10%, 50% and 90% of its FLOPs, its three tails
realigned with ``graft_fx.realign(tails)`` (``verify=True``, the default: it raises GraftError on
a mismatch), and then, beyond that built-in check:

* each tail applied to its head's output gives the model's output (the split is exact);
* ``rm(x_1, x_2, x_3)`` equals each tail run alone for the batch sizes (1, 2, 0), (0, 1, 3) and
  (2, absent, 1), and so does the module realigned with ``buckets=(1, 2, 4)`` (padded batching)
  at (3, 1, 2) and (0, 3, absent), on the heads' activations, at ``torch.testing.assert_close``'s default
  tolerances. Only where the model itself is not batch-invariant (a row's output moves when it
  runs alone rather than in a batch: CPU kernels block by batch size) is the looser
  ``bench.loose_tolerance`` allowed, the slack that ``verify`` allows. A 0-row fragment returns
  an empty output, or, where its tail alone raises at 0 rows (``reshape(0, N, h, -1)`` is
  ambiguous), ``rm`` may raise the same error, as eager does (``bench.check_call``);
* the cuts reach deep (the deepest one has at least ``REACH`` of the FLOPs before it: cut points
  exist past every layer graft_fx can judge), and some segment serves all three fragments with
  all of the deepest fragment's FLOPs in it: every model here is row-wise after its deepest cut
  in eval mode, so the layers there must run once for everyone.

A model that torch.export cannot capture must be refused with a TraceError that names the
construct (the file and line it failed on); such a model is marked xfail with that message.
``KNOWN_FAILURES`` lists the graft_fx bugs this test found, by model and aspect, as strict xfails:
fixing one makes its entry fail (XPASS) until it is removed.

CI runs ``bench.CI_SAMPLE`` (7 torchvision and 5 timm models across families, about 3 minutes on
two cores). ``GRAFT_ZOO=all`` runs every torchvision classification model and the whole timm
sample (``bench.TIMM_SIDES``; about 30 minutes on two cores, up to 6 GiB of memory).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import graft_fx


def _load_bench():
    """benchmarks/bench_coverage.py as a module, with its folder on the path as when it runs as a
    script (it imports the folder's `machine` module)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_coverage.py"
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location("bench_coverage", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_coverage", module)  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

EVERYTHING = os.environ.get("GRAFT_ZOO", "").lower() == "all"
CASES = bench.all_cases()
NAMES = list(CASES) if EVERYTHING else list(bench.CI_SAMPLE)
REACH = 0.5

# Models with fewer than three cut points by their architecture: two tensors are live from the
# input to the output, so no single tensor crosses anywhere in between.
FEW_CUTS: dict[str, str] = {
    "timm/crossvit_tiny_240": "its two branches (two patch sizes of the image) meet only in the averaged heads",
}

# Graft_fx bugs found here, by model and aspect ("split", "verify", "exact" (the calls without a
# 0-row fragment), "empty" (those with one), "reach", "shared") -> the diagnosis. None at present:
# the last ones (swin's new_zeros mask, einsum, im2col, repeat_interleave, folded batches in
# convolutions and RNNs) were fixed in issue 7.
KNOWN_FAILURES: dict[str, dict[str, str]] = {}


@dataclass
class Served:
    name: str
    model: nn.Module
    images: torch.Tensor
    cuts: list[graft_fx.CutPoint] = field(default_factory=list)
    tails: list[nn.Module] = field(default_factory=list)
    acts: list[torch.Tensor] = field(default_factory=list)
    rm: graft_fx.RealignedModule | None = None
    error: BaseException | None = None  # cut_points, split or realign(tails) raised (verify's GraftError, or a bug)
    noise: float | None = None  # bench.batch_noise of the model, measured when first needed

    def batch_noise(self) -> float:
        if self.noise is None:
            with torch.no_grad():
                self.noise = bench.batch_noise(self.model, self.images, bench.eager(self.model, self.images))
        return self.noise


def _clear_trace_error(e: graft_fx.TraceError) -> bool:
    """A TraceError names the construct: where in the model's code capture failed, and why."""
    text = str(e)
    return "could not be captured" in text and re.search(r" at \w[\w.]*\.py:\d+", text) is not None


def _aspect(item: pytest.Item) -> str:
    name = item.originalname
    if name in ("test_realigned_equals_each_tail_alone", "test_padded_equals_each_tail_alone"):
        return "empty" if 0 in item.callspec.params["rows"] else "exact"
    return {"test_split_is_exact": "split", "test_realign_verifies": "verify", "test_cuts_reach_deep": "reach",
            "test_deepest_tail_shared_by_all_three": "shared"}[name]


@pytest.fixture(autouse=True)
def _known_failures(request):
    reason = KNOWN_FAILURES.get(request.node.callspec.params.get("served"), {}).get(_aspect(request.node))
    if reason is not None:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture(scope="module", params=NAMES)
def served(request):
    name = request.param
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    case = CASES[name]
    with torch.no_grad():
        model = bench.build(case)
        s = Served(name, model, bench.images(case))
        try:
            s.cuts = graft_fx.cut_points(model, s.images)
            picked = [s.cuts[i] for i in bench.pick_cuts(s.cuts)]
            if len(picked) < 3 and name in FEW_CUTS:
                pytest.skip(f"{name} has {len(s.cuts)} cut point(s): {FEW_CUTS[name]}")
            assert len(picked) == 3, f"{name} has only {len(s.cuts)} cut point(s) that leave the server work"
            s.cuts = picked
            heads, tails = zip(*(graft_fx.split(model, cut, s.images) for cut in picked))
            s.tails, s.acts = list(tails), [head(s.images) for head in heads]
            s.rm = graft_fx.realign(s.tails)
        except graft_fx.TraceError as e:
            assert _clear_trace_error(e), f"{name}: the TraceError does not name the construct: {e}"
            pytest.xfail(f"{name} cannot be captured: {e}")
        except Exception as e:  # noqa: BLE001 - every test reports it
            s.error = e
            if s.tails:  # verify refused it: the explicit checks still report
                with contextlib.suppress(Exception):  # then the tests that need it report s.error
                    s.rm = graft_fx.realign(s.tails, verify=False)
    yield s
    bench.forget_analyses()  # one model in memory at a time


def _ready(served: Served, need_rm: bool = True) -> None:
    """Raise what stopped the fixture short of what a test needs, for the test to report."""
    if not served.tails or (need_rm and served.rm is None):
        raise served.error


def _compare(served: Served, check) -> None:
    """``check(loose)`` at the default tolerances; looser only for a model that is not itself
    batch-invariant, and then only by ``verify``'s slack."""
    try:
        check(False)
    except AssertionError:
        if served.batch_noise() == 0:
            raise
        check(True)


def test_split_is_exact(served):
    _ready(served, need_rm=False)
    with torch.no_grad():
        expected = bench.eager(served.model, served.images)  # the unfused attention that export traces
        for f, (tail, x) in enumerate(zip(served.tails, served.acts)):
            out = tail(x)

            def check(loose, f=f, out=out):
                tolerance = bench.loose_tolerance(expected) if loose else {}
                torch.testing.assert_close(out, expected, **tolerance, msg=lambda m: f"tail {f} after its head: {m}")

            _compare(served, check)


def test_realign_verifies(served):
    if served.error is not None:
        raise served.error


@pytest.mark.parametrize("rows", bench.CALLS, ids=lambda rows: "-".join("x" if b is None else str(b) for b in rows))
def test_realigned_equals_each_tail_alone(served, rows):
    _ready(served)
    inputs = bench.call_inputs(served.acts, rows)
    assert all(x.abs().max() > 0 for x in served.acts), "a fragment's input is all zeros"
    with torch.no_grad():
        _compare(served, lambda loose: bench.check_call(served.rm, served.tails, inputs, loose=loose))


@pytest.mark.parametrize("rows", [(3, 1, 2), (0, 3, None)], ids=["3-1-2", "0-3-x"])
def test_padded_equals_each_tail_alone(served, rows):
    """The tails realigned with ``buckets`` (rows padded up to 1, 2 or 4 with copies of a real
    row, cut back from every output): every model here is row-wise in eval mode, so padding must
    be accepted and change nothing."""
    _ready(served)
    padded = graft_fx.realign(served.tails, verify=False, buckets=(1, 2, 4))
    inputs = bench.call_inputs(served.acts, rows)
    with torch.no_grad():
        _compare(served, lambda loose: bench.check_call(padded, served.tails, inputs, loose=loose))


def test_cuts_reach_deep(served):
    _ready(served, need_rm=False)
    deepest = served.cuts[-1]
    assert deepest.flops_before >= REACH, (
        f"the deepest cut point near 90% of the FLOPs is {deepest.layer} at {deepest.flops_before:.1%}: "
        "no cut point follows it")


def test_deepest_tail_shared_by_all_three(served):
    _ready(served)
    assert bench.shares_all(served.rm), str(served.rm.plan)
    assert bench.deepest_shared(served.rm) > 0.999, str(served.rm.plan)
