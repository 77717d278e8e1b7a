"""Planned groups as running instances: every request's output row equals the model's own output
on the input that produced that request's activation, for mixed batches (each member with 0, 1
or several rows, in any order), on torchvision's resnet18 with a measured profile, on a small
hand-written residual net, and on random networks (tests/nets.py); plus the API's errors, its
thread safety and its promise to cut the model once."""

from __future__ import annotations

import itertools
import random
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import graft_fx
import graft_fx.cuts
from graft_fx import GraftError
from graft_fx.serving import instances, planner
from graft_fx.serving.measure import measure
from graft_fx.serving.profiles import Piece, Profile
from models import example as small_example
from models import seeded
from nets import make_input, networks


def group(*fragments: int) -> planner.Group:
    return planner.Group(tuple(fragments), 1.0, 1, 0.01, 0.005, 0.005, 0.02, 1.0)


def plan_of(*groups: tuple[int, ...]) -> planner.Plan:
    return planner.Plan(tuple(group(*g) for g in groups))


def profile_of(model: nn.Module, example: torch.Tensor, names: list[str] | None = None) -> Profile:
    """A profile (of made-up latencies) whose fragments are ``names``, default every cut point."""
    cuts = {c.name: c for c in graft_fx.cut_points(model, example)}
    names = list(cuts) if names is None else names
    pieces = tuple(Piece(n, "output", 0.1, cuts[n].activation_bytes if n in cuts else 4, ()) for n in names)
    return Profile("net", "CPU (test)", "made up", pieces, np.array([1.0]), np.array([1]),
                   np.full((len(pieces), 1, 1), 1e-3))


def requests(members: tuple[int, ...], counts: dict[int, int], seed: int) -> list[int]:
    """Fragment of each request of a batch with ``counts[f]`` requests of member f, shuffled."""
    order = [f for f in members for _ in range(counts.get(f, 0))]
    random.Random(seed).shuffle(order)
    return order


def mixes(members: tuple[int, ...]) -> list[dict[int, int]]:
    """Batches in which every member has 0, 1 and several (3) requests, in turn; and all at once."""
    sizes = (0, 1, 3)
    out = [{f: sizes[(m + r) % 3] for m, f in enumerate(members)} for r in range(3)]
    return [c for c in out if any(c.values())] + [{f: 2 for f in members}]


def check_instance(model, profile, inst: instances.Instance, make_input, seed: int = 0) -> int:
    """Run mixed batches through ``inst``; each output row must equal ``model`` on its input.
    Returns the number of requests checked."""
    heads = {f: graft_fx.split(model, profile.fragments[f], make_input(2, 0))[0] for f in inst.fragments}
    checked = 0
    for k, counts in enumerate(mixes(inst.fragments)):
        fragments = requests(inst.fragments, counts, seed + k)
        xs = [make_input(1, 1000 * seed + 10 * k + i) for i in range(len(fragments))]
        with torch.no_grad():
            expected = [model(x.clone()) for x in xs]
            rows = [heads[f](x.clone()) for f, x in zip(fragments, xs)]
        outputs = inst.run(fragments, rows)
        assert len(outputs) == len(fragments)
        for f, out, want in zip(fragments, outputs, expected):
            shape, dtype = inst.output_spec(f)
            assert out.shape == (1, *shape) and out.dtype == dtype
            torch.testing.assert_close(out, want, msg=lambda m: f"fragment {f} ({profile.fragments[f]}): {m}")
        checked += len(fragments)
    return checked


# --- resnet18 with a measured profile ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    example = torch.randn(2, 3, 64, 64)
    profile = measure(model, example, "resnet18", device="cpu", batches=(1, 2), reps=1, warmup=0)
    return model, example, profile


def test_resnet18_instances_equal_the_model_on_mixed_batches(resnet18):
    model, example, profile = resnet18
    n = len(profile.fragments)
    assert n >= 9
    plan = plan_of((0,), (1, 2), (3, 5, 6), (n - 4, n - 3, n - 2, n - 1))  # fragment 4 is not planned
    built = instances.build(model, example, profile, plan)
    assert [i.fragments for i in built] == [g.fragments for g in plan.groups]
    assert [i.names for i in built] == [tuple(profile.fragments[f] for f in g.fragments) for g in plan.groups]

    def images(batch, seed):
        return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))

    for inst in built:
        assert check_instance(model, profile, inst, images) > 0
        assert not inst.module.training
        for f in inst.fragments:
            spec = inst.input_spec(f)
            assert spec.row_shape == profile.pieces[f].row_shape and spec.dtype == torch.float32
            assert inst.output_spec(f) == ((1000,), torch.float32)


# --- a small hand-written residual net --------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    model = seeded()
    profile = profile_of(model, small_example())
    plan = plan_of((0, 2), (1,), (3, 4, 5, 6, 7), (8, 9))
    return model, profile, plan, instances.build(model, small_example(), profile, plan)


def small_input(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_small_instances_equal_the_model_on_mixed_batches(small):
    model, profile, _, built = small
    for seed, inst in enumerate(built):
        assert check_instance(model, profile, inst, small_input, seed) > 0


def test_run_keeps_request_order_and_hands_back_views_of_one_row_each(small):
    model, profile, _, built = small
    inst = built[2]
    fragments = [7, 3, 7, 5, 3]
    heads = {f: graft_fx.split(model, profile.fragments[f], small_example())[0] for f in set(fragments)}
    xs = [small_input(1, i) for i in range(len(fragments))]
    out = inst.run(fragments, [heads[f](x) for f, x in zip(fragments, xs)])
    torch.testing.assert_close(torch.cat(out), model(torch.cat(xs)))
    assert all(o.shape == (1, 5) for o in out)
    assert inst.run([], []) == []


def test_small_groups_have_every_graph_built_and_larger_ones_build_under_a_lock(small):
    _, _, _, built = small
    for inst in built:
        k = len(inst.fragments)
        if k <= instances.PREBUILT_MEMBERS:
            assert len(inst.module._graphs) == 2 ** k - 1 and inst._lock is None
        else:
            assert inst._lock is not None and inst._ready <= set(inst.module._graphs)


def test_concurrent_runs_from_many_threads_agree_with_the_model():
    model = seeded()
    profile = profile_of(model, small_example())
    plan = plan_of((0, 1, 2), (3, 4, 5, 6, 7, 8))  # prebuilt, and built on first use under the lock
    built = instances.build(model, small_example(), profile, plan, verify=False)
    heads = {f: graft_fx.split(model, n, small_example())[0] for f, n in enumerate(profile.fragments)}
    errors = []
    start = threading.Barrier(8)

    def worker(t: int):
        try:
            rng = random.Random(t)
            start.wait()
            for k in range(12):
                inst = built[k % 2]
                fragments = [rng.choice(inst.fragments) for _ in range(rng.randint(1, 5))]
                xs = [small_input(1, 100 * t + 10 * k + i) for i in range(len(fragments))]
                out = inst.run(fragments, [heads[f](x) for f, x in zip(fragments, xs)])
                with torch.no_grad():
                    torch.testing.assert_close(torch.cat(out), model(torch.cat(xs)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert built[1]._ready and built[1]._ready <= set(built[1].module._graphs)


def test_build_cuts_the_model_once(monkeypatch):
    model = seeded()
    profile = profile_of(model, small_example())
    calls = []
    real = graft_fx.cuts.analyze
    monkeypatch.setattr(graft_fx.cuts, "analyze", lambda *a, **k: calls.append(1) or real(*a, **k))
    instances.build(model, small_example(), profile, plan_of((0, 2), (1,), (3, 4), (5,), (6, 7, 8)), verify=False)
    assert len(calls) == 1


def test_a_single_fragment_group_runs_like_its_tail(small):
    model, profile, _, built = small
    (inst,) = [i for i in built if i.fragments == (1,)]
    head, tail = graft_fx.split(model, profile.fragments[1], small_example())
    rows = [head(small_input(1, i)) for i in range(3)]
    torch.testing.assert_close(torch.cat(inst.run([1, 1, 1], rows)), tail(torch.cat(rows)))


def test_the_model_is_left_as_it_was():
    model = seeded().train()
    profile = profile_of(model, small_example())
    (inst,) = instances.build(model, small_example(), profile, plan_of((2, 5)), verify=False)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    head = graft_fx.split(model, profile.fragments[5], small_example())[0]
    x = small_input(2, 0)
    out = inst.run([5, 5], list(head(x).split(1)))
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(out), model(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_instances_on_a_gpu():
    model = seeded()
    profile = profile_of(model, small_example())
    (inst,) = instances.build(model, small_example(), profile, plan_of((1, 4)), device="cuda")
    assert next(model.parameters()).device.type == "cpu"
    heads = {f: graft_fx.split(model, profile.fragments[f], small_example())[0] for f in (1, 4)}
    xs = [small_input(1, i) for i in range(3)]
    out = inst.run([4, 1, 4], [heads[f](x).cuda() for f, x in zip([4, 1, 4], xs)])
    assert out[0].device.type == "cuda"
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(out).cpu(), model(torch.cat(xs)))


# --- random networks --------------------------------------------------------------------------------------

@settings(max_examples=12)
@given(drawn=networks(), data=st.data())
def test_random_networks_instances_equal_the_model(drawn, data):
    model = drawn.model
    names = [c.name for c in graft_fx.cut_points(model, drawn.example)]
    chosen = data.draw(st.lists(st.sampled_from(range(len(names))), min_size=1, max_size=6, unique=True))
    cuts = data.draw(st.lists(st.integers(1, len(chosen)), max_size=3))
    bounds = sorted({0, len(chosen), *cuts})
    groups = [tuple(sorted(chosen[a:b])) for a, b in zip(bounds, bounds[1:])]
    profile = profile_of(model, drawn.example, names)
    built = instances.build(model, drawn.example, profile, plan_of(*groups), verify=False)
    for seed, inst in enumerate(built):
        check_instance(model, profile, inst, lambda batch, s: make_input(drawn, batch, s), seed)


# --- errors -----------------------------------------------------------------------------------------------

def test_a_profile_fragment_that_is_not_a_cut_point_is_named():
    model = seeded()
    profile = profile_of(model, small_example(), ["x", "conv2d", "layer9_relu"])
    with pytest.raises(GraftError, match=r"not cut points of this model.*2 \('layer9_relu'\)"):
        instances.build(model, small_example(), profile, plan_of((0,), (1, 2)))
    instances.build(model, small_example(), profile, plan_of((0, 1)), verify=False)  # the plan does not use it


@pytest.mark.parametrize("groups, match", [
    (((0,), (1, 10)), r"group 1 serves fragments \[10\], which the profile of 'net' lacks: it has fragments 0..9"),
    (((-1,),), r"group 0 serves fragments \[-1\]"),
    (((0, 0),), r"expected one or more distinct"),
    (((),), r"expected one or more distinct"),
])
def test_plans_that_do_not_fit_the_profile_are_refused(groups, match):
    model = seeded()
    with pytest.raises(GraftError, match=match):
        instances.build(model, small_example(), profile_of(model, small_example()), plan_of(*groups))


def test_run_refuses_bad_requests(small):
    model, profile, _, built = small
    inst = built[0]  # fragments 0 and 2
    head = graft_fx.split(model, profile.fragments[2], small_example())[0]
    row = head(small_input(1, 0))
    with pytest.raises(GraftError, match=r"fragment 1 is not served by this instance: it serves fragments \[0, 2\]"):
        inst.run([2, 1], [row, row])
    with pytest.raises(GraftError, match="one fragment per row"):
        inst.run([2, 2], [row])
    with pytest.raises(GraftError, match=r"2 requests of fragment 2 \(.*\) hold 3 rows; expected one row"):
        inst.run([2, 2], [row, torch.cat([row, row])])
    with pytest.raises(GraftError, match="expected"):
        inst.run([0], [row])  # fragment 0 takes images, not fragment 2's activations
    with pytest.raises(GraftError, match="not served"):
        inst.input_spec(5)
    with pytest.raises(GraftError, match="not served"):
        inst.output_spec(5)


def test_an_instance_must_agree_with_its_module(small):
    _, _, _, built = small
    with pytest.raises(GraftError, match="must agree"):
        instances.Instance((2, 0), built[0].names, built[0].module)
    with pytest.raises(GraftError, match="must agree"):
        instances.Instance((0,), ("x",), built[0].module)


def test_a_model_with_two_outputs_is_refused():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return y, y.relu()

    model = Two().eval()
    x = torch.randn(2, 4)
    with pytest.raises(GraftError, match="one tensor"):
        instances.build(model, x, profile_of(model, x), plan_of((0,)), verify=False)


def test_mixes_cover_empty_single_and_several_rows_per_member():
    for k in (1, 2, 3, 5):
        members = tuple(range(k))
        seen = {f: {c.get(f, 0) for c in mixes(members)} for f in members}
        assert all({0, 1, 3} <= s or k == 1 and {1, 3} <= s for s in seen.values())
        assert all(sum(c.values()) for c in mixes(members))
        assert list(itertools.chain(*[requests(members, c, 0) for c in mixes(members)]))
