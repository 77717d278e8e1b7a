"""The workload: budget arithmetic by hand, what clients upload, Neurosurgeon's choice on synthetic
costs, arrival statistics and their steady start, determinism, the vectorised stream against
choosing send by send, clients from a population of phones, a real model through `model_costs`,
and a bundled trace end to end."""

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import graft_fx
from graft_fx import CutPoint, GraftError
from graft_fx.serving import Trace, bundled
from graft_fx.serving.devices import PHONE_SPEEDS
from graft_fx.serving.requests import Request
from graft_fx.serving.uploads import CutTensor, Upload, jpeg_bytes
from graft_fx.serving.workload import (
    DEVICES, ArrivalProcess, Client, ClientStats, DeviceClass, Gamma, ModelCosts, Origin, Poisson, _frontier,
    _options, choose, generate, make_clients, model_costs,
)

# A 4 GFLOP model: a 150 kB input, a wide early activation, a small one late in the model.
COSTS = ModelCosts(
    (CutPoint("x", 150_000, 0.0), CutPoint("conv", 600_000, 0.3), CutPoint("pool", 2_000, 0.5)),
    flops=4e9, input_bytes=150_000)
MID = DEVICES["mid-range"]
SLOW_PHONE = DeviceClass("slow", gflops=5.0, overhead_ms=4.0)
FAST_PHONE = DeviceClass("fast", gflops=1000.0, overhead_ms=1.0)


def flat(mbps: float) -> Trace:
    """A constant-bandwidth trace."""
    return Trace(f"flat-{mbps}", [0.0], [mbps], "synthetic")


def client(device=MID, trace=None, rate=1.0, slo=1.0, offset=0.0, id=0):
    return Client(id, device, trace or flat(8.0), offset, Poisson(rate), slo)


# Budget arithmetic.

def test_arrival_and_deadline_by_hand_for_a_chosen_cut():
    """Cut "conv" on a 20 GFLOP/s phone over 8 Mbit/s: 2 ms + 1.2 GFLOP / 20 GFLOP/s on the phone,
    600 kB * 8 / 8 Mbit/s = 0.6 s on the uplink."""
    c = client(slo=0.5, offset=3.0)
    w = generate([c], COSTS, duration_s=20.0, seed=1, fragments=[1], local=False)
    device_s, upload_s = 0.002 + 0.3 * 4e9 / 20e9, 600_000 * 8 / 8e6
    assert w.requests and w.mix == {1: len(w.requests)}
    for r, o in zip(w.requests, w.origins):
        assert (o.client, r.fragment) == (0, 1)
        assert o.device_s == pytest.approx(device_s, abs=1e-12)
        assert o.upload_s == pytest.approx(upload_s, abs=1e-9)
        assert r.arrival_s == pytest.approx(o.send_s + device_s + upload_s, abs=1e-9)
        assert r.deadline_s == o.send_s + 0.5
        assert r.budget_s == pytest.approx(0.5 - device_s - upload_s, abs=1e-9)  # below 0
    assert w.clients == {0: ClientStats(sent=len(w.requests), late=len(w.requests))}
    assert w.late == len(w.requests) and w.local == 0


def test_raw_input_cut_costs_no_device_time():
    choice = choose(client(), COSTS, 0.0, candidates=[0])
    assert (choice.fragment, choice.device_s) == (0, 0.0)
    assert choice.upload_s == pytest.approx(150_000 * 8 / 8e6)


def test_the_upload_starts_when_the_head_finishes_at_the_clients_offset():
    """1 Mbit/s for the first second of each 2 s loop, 0 then: the 1.2 s head ends in the dead
    half, so the 1 kB upload waits for the next loop."""
    trace = Trace("on-off", [0.0, 1.0], [1.0, 0.0], "synthetic")
    c = client(device=DeviceClass("d", 1.0, 0.0), trace=trace, offset=0.5)
    choice = choose(c, ModelCosts((CutPoint("h", 1000, 0.3),), 4e9, 1000), 0.3, candidates=[0])
    # the head runs 1.2 s from trace time 0.8: the upload starts at 2.0 and takes 8 ms.
    assert choice.device_s == pytest.approx(1.2)
    assert choice.upload_s == pytest.approx(0.008)
    choice = choose(c, ModelCosts((CutPoint("h", 1000, 0.1),), 4e9, 1000), 0.3, candidates=[0])
    # the head ends at trace time 1.2, in the dead half: it waits 0.8 s, then takes 8 ms.
    assert choice.upload_s == pytest.approx(0.808)


# What clients upload.

IMAGE_COSTS = ModelCosts(
    COSTS.cuts, COSTS.flops, COSTS.input_bytes,
    (CutTensor((3, 125, 100), torch.float32, is_input=True), CutTensor((150_000,), torch.float32),
     CutTensor((500,), torch.float32)))


def test_the_upload_is_the_cut_tensor_as_encoded():
    assert [IMAGE_COSTS.upload_bytes(f) for f in range(3)] == [150_000, 600_000, 2_000]
    phone = IMAGE_COSTS.encoded(Upload("fp16", jpeg_quality=90))
    assert [phone.upload_bytes(f) for f in range(3)] == [jpeg_bytes(125, 100, 90), 300_000, 1_000]
    assert IMAGE_COSTS.encoded(Upload("int8")).upload_bytes(2) == 500 + 8


def test_the_raw_input_baseline_uploads_the_jpeg():
    costs = IMAGE_COSTS.encoded(Upload(jpeg_quality=75))
    w = generate([client(trace=flat(8.0))], costs, duration_s=10.0, fragments=[0], local=False)
    assert w.requests
    assert [o.upload_s for o in w.origins] == pytest.approx([jpeg_bytes(125, 100, 75) * 8 / 8e6] * len(w.origins))


def test_a_cheaper_upload_moves_the_cut_earlier():
    """At 8 Mbit/s, a 0.6 s fp32 upload of "conv" loses to "pool"; as int8 (0.15 s) it wins."""
    c = client(device=SLOW_PHONE, trace=flat(8.0))
    estimate = lambda f: [1.0, 0.0, 0.1][f]  # noqa: E731
    assert choose(c, IMAGE_COSTS, 0.0, estimate, candidates=[1, 2]).fragment == 2
    assert choose(c, IMAGE_COSTS.encoded(Upload("int8")), 0.0, estimate, candidates=[1, 2]).fragment == 1


def test_costs_reject_tensors_that_do_not_fit_and_encodings_they_cannot_size():
    with pytest.raises(GraftError, match="2 cut tensors for 3 cuts"):
        ModelCosts(COSTS.cuts, 4e9, 150_000, IMAGE_COSTS.tensors[:2])
    with pytest.raises(GraftError, match="encoding needs the cut tensors"):
        COSTS.encoded(Upload("fp16"))


# Neurosurgeon's choice.

def frontier(costs, estimate, candidates):
    return [o.fragment for o in _frontier(_options(costs, estimate, candidates))]


def test_slow_network_cuts_late_where_activations_are_small():
    choice = choose(client(trace=flat(0.5)), COSTS, 0.0)
    assert choice.fragment == 2
    assert choice.total_s == pytest.approx(0.002 + 0.5 * 4e9 / 20e9 + 2_000 * 8 / 0.5e6)


def test_fast_network_and_slow_phone_upload_the_raw_input():
    assert choose(client(device=SLOW_PHONE, trace=flat(100.0)), COSTS, 0.0).fragment == 0


def test_fast_phone_and_slow_network_run_everything_locally_and_send_nothing():
    c = client(device=FAST_PHONE, trace=flat(0.5), rate=5.0)
    assert choose(c, COSTS, 0.0).fragment is None
    w = generate([c], COSTS, duration_s=10.0)
    assert not w.requests and w.mix == {}
    assert w.local == w.clients[0].local > 20 and w.clients[0].local_late == 0


def test_the_server_estimate_moves_the_cut():
    c = client(device=SLOW_PHONE, trace=flat(100.0))
    assert choose(c, COSTS, 0.0, server_estimate=lambda f: [1.0, 0.5, 0.0][f]).fragment == 2


def test_ties_go_to_the_deeper_cut():
    """A cut after a ReLU costs what the cut before it does."""
    costs = ModelCosts((CutPoint("conv", 1000, 0.5), CutPoint("relu", 1000, 0.5)), 1e9, 1000)
    assert choose(client(), costs, 0.0, candidates=[0, 1]).fragment == 1
    assert frontier(costs, None, [0, 1]) == [1]


def test_the_frontier_drops_what_cannot_win():
    # "conv" sends more than "x" after more FLOPs; local sends nothing but runs all of them.
    assert frontier(COSTS, None, [0, 1, 2, None]) == [0, 2, None]
    # a server estimate that rewards "conv" keeps it.
    assert frontier(COSTS, lambda f: [1.0, 0.5, 0.6][f], [0, 1, 2]) == [0, 1, 2]


def test_fewer_flops_alone_do_not_drop_a_cut():
    """Both heads end in a dead second and both uploads end together: a tie, so the deeper wins."""
    trace = Trace("dead-then-live", [0.0, 1.0], [0.0, 8.0], "synthetic")
    costs = ModelCosts((CutPoint("a", 1000, 0.1), CutPoint("b", 1000, 0.3)), 1e9, 1000)
    c = client(device=DeviceClass("d", 10.0, 0.0), trace=trace)
    assert frontier(costs, None, [0, 1]) == [0, 1]
    assert choose(c, costs, 0.0, candidates=[0, 1]).fragment == 1


cut_costs = st.tuples(st.sampled_from([0, 500, 1000, 4000]), st.sampled_from([0.0, 0.1, 0.3, 0.3, 0.7, 1.0]),
                      st.sampled_from([0.0, 0.01, 0.02]))


@given(st.lists(cut_costs, min_size=1, max_size=6),
       st.lists(st.sampled_from([0.0, 0.5, 2.0, 8.0]), min_size=1, max_size=5).filter(any),
       st.floats(0, 10), st.floats(0, 10), st.sampled_from([0.0, 2.0]))
def test_choosing_over_the_frontier_equals_choosing_over_all(cuts, mbps, send_s, offset, overhead):
    costs = ModelCosts(tuple(CutPoint(f"c{i}", b, f) for i, (b, f, _) in enumerate(cuts)), 1e9, 1)
    estimate = lambda f: cuts[f][2]  # noqa: E731
    trace = Trace("steps", np.arange(len(mbps)) * 0.25, mbps, "synthetic")
    c = client(device=DeviceClass("d", 10.0, overhead), trace=trace, offset=offset)
    every = [*range(len(cuts)), None]
    assert (choose(c, costs, send_s, estimate, frontier(costs, estimate, every))
            == choose(c, costs, send_s, estimate, every))


# Arrivals.

@pytest.mark.parametrize("process, cv", [
    (Poisson(40.0), 1.0), (Gamma(40.0, 0.5), 0.5), (Gamma(40.0, 1.0), 1.0), (Gamma(40.0, 2.5), 2.5)])
def test_arrival_rate_and_coefficient_of_variation(process, cv):
    rng = np.random.default_rng(7)
    times = process.times(rng, 5000.0)
    gaps = np.diff(times)
    assert len(times) / 5000.0 == pytest.approx(40.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    assert 0 < times[0] and times[-1] < 5000.0 and np.all(gaps >= 0)


def test_bad_arrival_parameters_raise():
    for bad in (lambda: Poisson(0.0), lambda: Gamma(1.0, 0.0), lambda: Gamma(-1.0, 1.0)):
        with pytest.raises(GraftError):
            bad()


def test_a_bursty_process_starts_in_steady_state():
    """cv = 3: over many runs, [0, 0.5 s) holds rate * 0.5 = 1 arrival on average, and the first
    arrival comes (1 + cv**2) / (2 * rate) = 2.5 s after 0 on average. Starting at an arrival
    instead would count 3.7: bursts cluster right after it."""
    process, rng = Gamma(2.0, 3.0), np.random.default_rng(0)
    counts = [len(process.times(rng, 0.5)) for _ in range(20_000)]
    assert np.mean(counts) == pytest.approx(1.0, rel=0.06)
    at_an_arrival = [np.sum(np.cumsum(process.gaps(rng, 100)) < 0.5) for _ in range(20_000)]
    assert np.mean(at_an_arrival) > 2.0
    assert np.mean([process.first_gap(rng) for _ in range(20_000)]) == pytest.approx(2.5, rel=0.03)


def test_a_poisson_process_first_arrival_is_exponential():
    """Kolmogorov-Smirnov against Exp(rate): the statistic stays under 1.36 / sqrt(n) (5% level)."""
    rng = np.random.default_rng(1)
    first = np.sort([Poisson(4.0).times(rng, 10.0)[0] for _ in range(5_000)])
    n = len(first)
    cdf = 1 - np.exp(-4.0 * first)
    statistic = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert statistic < 1.36 / math.sqrt(n)


# Streams.

def test_streams_are_sorted_numbered_deterministic_and_counted():
    traces = [flat(2.0), Trace("wavy", [0.0, 1.0, 2.5], [1.0, 6.0, 0.0], "synthetic")]
    clients = make_clients(8, DEVICES.values(), traces, rate_per_s=3.0, slo_s=0.3, cv=2.0, seed=5)
    assert [(c.device.name, c.trace.name) for c in clients[:4:3]] == [
        ("low-end", "flat-2.0"), ("flagship-npu", "flat-2.0")]
    assert {(c.device.name, c.trace.name) for c in clients} == {
        (d, t.name) for d in DEVICES for t in traces}
    w = generate(clients, COSTS, duration_s=30.0, seed=11)
    arrivals = [r.arrival_s for r in w.requests]
    assert arrivals == sorted(arrivals) and [r.id for r in w.requests] == list(range(len(arrivals)))
    assert w == generate(clients, COSTS, duration_s=30.0, seed=11)
    assert w.requests != generate(clients, COSTS, duration_s=30.0, seed=12).requests
    assert sum(s.sent for s in w.clients.values()) == len(w.requests) == sum(w.mix.values())
    assert w.late == sum(r.budget_s <= 0 for r in w.requests) > 0
    assert w.local > 0 and len(w.mix) > 1


def generate_send_by_send(clients, costs, duration_s, seed, estimate, fragments, local):
    """`generate` one send at a time, as it was before it was vectorised: the scalar upload time,
    each option's total in depth order, a later option taking the send on a total no larger."""
    options = _frontier(_options(costs, estimate, [*fragments, *([None] if local else [])]))
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(clients))]
    stats, sent = {}, []
    for c, rng in zip(clients, rngs):
        counts = Counter()
        for send_s in map(float, c.arrivals.times(rng, duration_s)):
            best = None
            for o in options:
                device_s = c.device.head_s(o.flops)
                upload_s = c.trace.upload_time_s(o.nbytes, c.offset_s + send_s + device_s)
                if best is None or device_s + upload_s + o.server_s <= best[0]:
                    best = (device_s + upload_s + o.server_s, o.fragment, device_s, upload_s)
            _, fragment, device_s, upload_s = best
            if fragment is None:
                counts.update(local=1, local_late=device_s > c.slo_s)
                continue
            arrival_s, deadline_s = send_s + device_s + upload_s, send_s + c.slo_s
            counts.update(sent=1, late=deadline_s - arrival_s <= 0)
            sent.append((arrival_s, c.id, send_s, deadline_s, fragment, device_s, upload_s))
        stats[c.id] = ClientStats(**counts)
    sent.sort(key=lambda s: s[:3])
    requests = tuple(Request(s[3], s[0], i, s[4]) for i, s in enumerate(sent))
    origins = tuple(Origin(s[1], s[2], s[5], s[6]) for s in sent)
    return requests, origins, stats, dict(sorted(Counter(s[4] for s in sent).items()))


@dataclass(frozen=True)
class Quarters(ArrivalProcess):
    """Arrivals on whole quarter seconds."""

    rate_per_s: float = 2.0

    def gaps(self, rng, n):
        return rng.integers(1, 4, n) * 0.25

    def first_gap(self, rng):
        return float(rng.integers(0, 4) * 0.25)


# Quarter seconds, 1, 2 or 4 Mbit/s, whole or half megabits, power-of-two phones: sums are exact,
# so totals tie, budgets hit zero and requests arrive together, and each rule is exercised.
phones = st.builds(DeviceClass, st.just("drawn"), st.sampled_from([1.0, 2.0, 4.0]),
                   st.sampled_from([0.0, 250.0]))
exact_mbps = st.lists(st.sampled_from([0.0, 1.0, 2.0, 4.0]), min_size=1, max_size=5).filter(any)
step_traces = st.tuples(st.sampled_from([0.25, 1.0]), exact_mbps).map(
    lambda step_mbps: Trace("steps", np.arange(len(step_mbps[1])) * step_mbps[0], step_mbps[1], "synthetic"))
arrivals = st.sampled_from([Quarters(), Quarters(), Poisson(2.0), Gamma(2.0, 2.0)])
drawn_clients = st.lists(st.tuples(phones, step_traces, st.integers(0, 40).map(lambda q: q / 4), arrivals,
                                   st.sampled_from([0.25, 0.5, 1.0, 2.0])), max_size=4).map(
    lambda drawn: [Client(i, *client) for i, client in enumerate(drawn)])
exact_cuts = st.tuples(st.sampled_from([0, 62_500, 125_000, 250_000]),
                       st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.sampled_from([0.0, 0.25, 0.5]))


@given(drawn_clients, st.lists(exact_cuts, min_size=1, max_size=6), st.booleans(), st.integers(0, 3),
       st.data())
def test_generate_equals_choosing_send_by_send(clients, cuts, local, seed, data):
    """Bit for bit: requests, where they came from, every client's counts and the mix."""
    costs = ModelCosts(tuple(CutPoint(f"c{i}", b, f) for i, (b, f, _) in enumerate(cuts)), 1e9, 1)
    estimate = data.draw(st.sampled_from([None, lambda f: cuts[f][2]]))
    fragments = data.draw(st.lists(st.sampled_from(range(len(cuts))), min_size=not local, unique=True))
    w = generate(clients, costs, 5.0, seed, estimate, fragments, local)
    assert (w.requests, w.origins, w.clients, w.mix) == generate_send_by_send(
        clients, costs, 5.0, seed, estimate, fragments, local)


@pytest.mark.parametrize("trace", ["lte-ghent-car-7", "3g-norway-bus-1", "fcc-8996"])
def test_generate_equals_choosing_send_by_send_on_a_bundled_trace(trace):
    """Real rates and a population of phones round where quarter seconds do not."""
    clients = make_clients(12, PHONE_SPEEDS, [bundled(trace)], rate_per_s=2.0, slo_s=0.3, cv=2.0, seed=1)
    costs, estimate = IMAGE_COSTS.encoded(Upload("fp16", jpeg_quality=90)), lambda f: [0.01, 0.004, 0.001][f]
    for fragments, local in (([0, 1, 2], True), ([1, 2], False)):
        w = generate(clients, costs, 20.0, 4, estimate, fragments, local)
        assert (w.requests, w.origins, w.clients, w.mix) == generate_send_by_send(
            clients, costs, 20.0, 4, estimate, fragments, local)


def test_clients_from_a_population_draw_their_own_phones_per_seed():
    traces = [flat(2.0), flat(4.0)]
    clients = make_clients(6, PHONE_SPEEDS, traces, rate_per_s=1.0, slo_s=0.5, cv=2.0, seed=5)
    assert [c.trace.name for c in clients] == ["flat-2.0", "flat-4.0"] * 3
    assert len({c.device.gflops for c in clients}) == 6
    assert all(c.arrivals == Gamma(1.0, 2.0) for c in clients)
    assert clients == make_clients(6, PHONE_SPEEDS, traces, rate_per_s=1.0, slo_s=0.5, cv=2.0, seed=5)
    other = make_clients(6, PHONE_SPEEDS, traces, rate_per_s=1.0, slo_s=0.5, cv=2.0, seed=6)
    assert [c.device for c in other] != [c.device for c in clients]


def test_a_coefficient_of_variation_of_one_is_poisson():
    clients = make_clients(2, DEVICES.values(), [flat(1.0)], rate_per_s=3.0, slo_s=1.0, cv=1.0)
    assert {c.arrivals for c in clients} == {Poisson(3.0)}


def test_generate_rejects_bad_arguments():
    with pytest.raises(GraftError, match="distinct"):
        generate([client(), client()], COSTS, 1.0)
    with pytest.raises(GraftError, match="indices"):
        generate([client()], COSTS, 1.0, fragments=[3])
    with pytest.raises(GraftError, match="candidate"):
        generate([client()], COSTS, 1.0, fragments=[], local=False)


# A real model and a real trace.

def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10)).eval()


def test_model_costs_of_a_tiny_cnn():
    model, x = tiny_cnn(), torch.randn(2, 3, 16, 16)
    costs = model_costs(model, x)
    convs = 2 * (8 * 16 * 16 * 3 * 9 + 16 * 8 * 8 * 8 * 9)  # a multiply-add is 2 FLOPs
    assert costs.flops == convs + 2 * 16 * 10
    assert costs.input_bytes == 3 * 16 * 16 * 4
    assert costs.cuts == tuple(graft_fx.cut_points(model, x))
    assert costs.cuts[0].activation_bytes == costs.input_bytes and costs.head_flops(0) == 0
    assert costs.head_flops(len(costs.cuts) - 1) == convs
    assert [costs.upload_bytes(f) for f in range(len(costs.cuts))] == [c.activation_bytes for c in costs.cuts]
    assert costs.tensors[0] == CutTensor((3, 16, 16), torch.float32, is_input=True)


def test_a_phone_uploads_a_jpeg_and_half_precision_activations_of_a_real_model():
    model, x = tiny_cnn(), torch.randn(2, 3, 16, 16)
    costs = model_costs(model, x, Upload("fp16", jpeg_quality=90))
    assert costs.upload_bytes(0) == jpeg_bytes(16, 16, 90)
    assert [costs.upload_bytes(f) for f in range(1, len(costs.cuts))] == [
        c.activation_bytes // 2 for c in costs.cuts[1:]]


def test_a_bundled_lte_uplink_end_to_end():
    costs = model_costs(tiny_cnn(), torch.randn(2, 3, 16, 16))
    trace = bundled("lte-verizon-up")
    clients = make_clients(8, DEVICES.values(), [trace], rate_per_s=2.0, slo_s=0.05, seed=3)
    assert len({c.offset_s for c in clients}) == 8
    assert all(0 <= c.offset_s < trace.duration_s for c in clients)
    w = generate(clients, costs, duration_s=60.0, seed=0, server_estimate=lambda f: 0.002)
    assert len(w.requests) + w.local == sum(
        s.sent + s.local for s in w.clients.values()) == pytest.approx(8 * 2.0 * 60.0, rel=0.15)
    for r, o in zip(w.requests, w.origins):
        assert r.arrival_s == o.send_s + o.device_s + o.upload_s
        assert r.deadline_s == o.send_s + 0.05 and 0 <= o.send_s < 60.0
        assert 0 <= r.fragment < len(costs.cuts)
    assert math.isclose(sum(w.mix.values()), len(w.requests))
