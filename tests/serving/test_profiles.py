"""Latency profiles: the shipped H200 data, interpolation, monotone cleaning, JSON round trips."""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from graft_fx import GraftError
from graft_fx.serving import profiles
from graft_fx.serving import profiles as P
from graft_fx.serving.profiles import Piece, Profile

MODELS = ["resnet50", "vgg16", "mobilenet_v2", "inception_v3", "vit_b_16"]


def toy(latency=None, shares=(0.25, 1.0), batches=(1, 2, 4)) -> Profile:
    """Two pieces; by default piece p takes (p + 1) * (1 + rows) / share ms at the grid points."""
    pieces = (Piece("x", "a", 0.5, 12, (3,)), Piece("a", "output", 0.5, 8, (2,)))
    if latency is None:
        latency = [[[(p + 1) * (1 + b) / s * 1e-3 for b in batches] for s in shares] for p in range(2)]
    return Profile("toy", "test device", "made up", pieces, np.array(shares), np.array(batches),
                   np.array(latency))


@pytest.mark.parametrize("model", MODELS)
def test_the_shipped_h200_profile_loads_for_every_benchmark_model(model):
    p = profiles.load(profiles.shipped()["h200"], model)
    assert p.device == "NVIDIA H200" and "measured" in p.source and "h200.json" in p.source
    assert p.fragments[0] == "x" and len(p.pieces) == 11 and p.max_batch == 64
    assert p.shares[-1] == 1.0 and np.isclose(p.shares[0], 16 / 132)
    assert sum(piece.flops_share for piece in p.pieces) == pytest.approx(1.0, abs=1e-6)
    whole = [p.fragment_s(0, n, 1.0) for n in (1, 8, 64)]
    assert 0 < whole[0] <= whole[1] <= whole[2] < 0.1  # tens of ms at most on an H200


def test_measured_points_are_kept_where_already_monotone():
    p = toy()
    assert p.piece_s(1, 2, 0.25) == pytest.approx(2 * 3 / 0.25 * 1e-3)
    assert p.table(1.0)[0, 4] == pytest.approx(5e-3)


def test_rows_interpolate_through_zero_and_extrapolate_along_the_last_slope():
    p = toy()
    assert p.piece_s(0, 0, 1.0) == 0.0
    assert p.piece_s(0, 0.5, 1.0) == pytest.approx(1e-3)    # half of L(1) = 2 ms
    assert p.piece_s(0, 3, 1.0) == pytest.approx(4e-3)      # between 3 ms at 2 and 5 ms at 4
    assert p.piece_s(0, 8, 1.0) == pytest.approx(9e-3)      # slope 1 ms per row past 4
    assert p.table(1.0, max_rows=8)[0].tolist() == pytest.approx([0, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3, 9e-3])


def test_shares_interpolate_linearly_and_scale_as_one_over_share_below_the_grid():
    p = toy()
    mid = p.piece_s(0, 1, 0.625)
    assert mid == pytest.approx((p.piece_s(0, 1, 0.25) + p.piece_s(0, 1, 1.0)) / 2)
    assert p.piece_s(0, 1, 0.125) == pytest.approx(2 * p.piece_s(0, 1, 0.25))


def test_noisy_measurements_are_made_monotone_in_rows_and_share():
    # piece 0 is faster at 2 rows than at 1, and faster at share 0.25 than at 1.0
    latency = [[[3e-3, 2e-3, 4e-3], [1e-3, 2.5e-3, 3e-3]], [[1e-3, 1e-3, 1e-3], [1e-3, 1e-3, 1e-3]]]
    p = toy(latency)
    assert p.latency_s[0].tolist() == [[3e-3, 3e-3, 4e-3], [1e-3, 2.5e-3, 3e-3]]


@given(st.lists(st.floats(1e-4, 1e-1), min_size=12, max_size=12),
       st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.floats(0, 20), st.floats(0, 20))
def test_latency_never_falls_as_rows_grow_or_share_shrinks(cells, s1, s2, r1, r2):
    p = toy(np.array(cells).reshape(2, 2, 3))
    (s_lo, s_hi), (r_lo, r_hi) = sorted((s1, s2)), sorted((r1, r2))
    for piece in range(2):
        assert p.piece_s(piece, r_lo, s_hi) <= p.piece_s(piece, r_hi, s_hi) + 1e-15
        assert p.piece_s(piece, r_hi, s_hi) <= p.piece_s(piece, r_hi, s_lo) + 1e-15


def test_batch_latency_sums_each_piece_once_over_the_rows_that_reach_it():
    p = toy()
    # 2 rows of type 0 and 2 of type 1: piece 0 runs 2 rows, piece 1 runs 4
    assert p.batch_s({0: 2, 1: 2}, 1.0) == pytest.approx(p.piece_s(0, 2, 1.0) + p.piece_s(1, 4, 1.0))
    assert p.batch_s({0: 3}, 1.0) == pytest.approx(p.fragment_s(0, 3, 1.0))
    assert p.batch_s({1: 3}, 1.0) == pytest.approx(p.fragment_s(1, 3, 1.0))
    assert p.batch_s({0: 70}, 1.0) == pytest.approx(p.fragment_s(0, 70, 1.0))  # beyond max_batch


def test_pieces_s_matches_piece_s_elementwise():
    p = profiles.load(profiles.shipped()["h200"], "resnet50")
    rows = np.array([[0.3, 1, 5.5], [2, 64, 90]])
    got = p.pieces_s(rows, 0.4, first=9)
    want = [[p.piece_s(9 + i, r, 0.4) for r in row] for i, row in enumerate(rows)]
    assert np.allclose(got, want, rtol=1e-12)


def test_json_round_trip_keeps_pieces_and_latencies(tmp_path):
    p = toy()
    path = tmp_path / "toy.json"
    p.save(path)
    q = profiles.load(path, "toy")
    assert q.pieces == p.pieces and q.device == p.device
    assert np.allclose(q.shares, p.shares) and np.allclose(q.latency_s, p.latency_s)
    assert "toy.json" in q.source and profiles.models_in(path) == ["toy"]


def test_bad_profiles_and_bad_questions_raise():
    with pytest.raises(GraftError, match="latency table of shape"):
        toy(np.ones((2, 2, 2)) * 1e-3)
    with pytest.raises(GraftError, match="ascending fractions"):
        toy(shares=(1.0, 0.5))
    with pytest.raises(GraftError, match="not positive"):
        toy(np.zeros((2, 2, 3)))
    with pytest.raises(GraftError, match=r"share 0: expected a fraction"):
        toy().piece_s(0, 1, 0)
    with pytest.raises(GraftError, match="no model 'resnet18'"):
        profiles.load(profiles.shipped()["h200"], "resnet18")


def test_a_file_that_is_not_a_profile_raises(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(GraftError, match="cannot read a latency profile"):
        profiles.load(path, "toy")


def _broken(doc: dict, how: str) -> object:
    piece = doc["models"]["toy"]["pieces"][1]
    if how == "a list":
        return [doc]
    if how == "no models":
        del doc["models"]
    elif how == "batches of text":
        doc["batches"] = "1,2,4"
    elif how == "no pieces":
        doc["models"]["toy"]["pieces"] = []
    elif how == "a piece without latencies":
        del piece["latency_ms"]
    elif how == "a missing cell":
        del piece["latency_ms"]["1.0"]["4"]
    elif how == "a cell of text":
        piece["latency_ms"]["1.0"]["4"] = "fast"
    elif how == "a share that is no number":
        for p in doc["models"]["toy"]["pieces"]:
            p["latency_ms"]["all"] = p["latency_ms"].pop("1.0")
    elif how == "a piece that is a number":
        doc["models"]["toy"]["pieces"][1] = 3
    elif how == "activation bytes of text":
        piece["activation_bytes"] = "many"
    return doc


@pytest.mark.parametrize("how, field", [
    ("a list", "profile: expected an object"),
    ("no models", "profile: missing field 'models'"),
    ("batches of text", "profile.batches: expected list"),
    ("no pieces", "models.toy.pieces: expected at least one piece"),
    ("a piece without latencies", "models.toy.pieces[1]: missing field 'latency_ms'"),
    ("a missing cell", "models.toy.pieces[1].latency_ms.1.0: missing field '4'"),
    ("a cell of text", "models.toy.pieces[1].latency_ms.1.0.4: expected int or float"),
    ("a share that is no number", "models.toy.pieces[0].latency_ms: expected shares as fractions"),
    ("a piece that is a number", "models.toy.pieces[1]: expected an object"),
    ("activation bytes of text", "models.toy.pieces[1].activation_bytes: expected int"),
])
def test_a_malformed_profile_gets_one_line_naming_the_file_and_field(tmp_path, how, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_broken(toy().to_json(), how)))
    with pytest.raises(GraftError) as e:
        profiles.load(path, "toy")
    assert str(e.value).startswith(f"latency profile {path}: ") and field in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_planning_uses_p99_service_times_where_measured():
    base = P.load(P.shipped()["h200"], "resnet50")
    assert base.planning is base and "TF32 convolutions" in base.label
    slower = dataclasses.replace(base, p99_s=base.latency_s * 1.5)
    assert np.allclose(slower.planning.latency_s, base.latency_s * 1.5)
    assert slower.planning.fragment_s(0, 1, 1.0) == pytest.approx(1.5 * base.fragment_s(0, 1, 1.0))


@given(st.sampled_from(["resnet50", "vit_b_16", "mobilenet_v2"]), st.floats(0.01, 1.0))
def test_tables_never_get_cheaper_as_a_batch_grows(model, share):
    table = P.load(P.shipped()["h200"], model).table(share)
    assert np.all(np.diff(table, axis=1) >= 0)


def test_above_the_largest_measured_share_latency_stays_at_the_largest():
    """A file measured at 16 and 32 SMs only: a whole device is planned as 32 SMs, never as a
    linear extrapolation that goes below zero."""
    full = P.load(P.shipped()["h200"], "resnet50")
    keep = [0, 1]  # 16 and 32 SMs
    part = Profile("r", full.device, "test", full.pieces, full.shares[keep], full.batches, full.latency_s[:, keep])
    assert np.allclose(part.table(1.0), part.table(float(full.shares[1])))
    assert np.all(part.table(1.0) >= 0)
    one = Profile("r", full.device, "test", full.pieces, full.shares[:1], full.batches, full.latency_s[:, :1])
    assert np.all(np.isfinite(one.table(1.0))) and np.allclose(one.table(1.0), one.table(float(full.shares[0])))


def test_non_finite_shares_are_refused():
    full = P.load(P.shipped()["h200"], "resnet50")
    with pytest.raises(GraftError, match="expected ascending fractions"):
        Profile("r", "d", "test", full.pieces[:1], np.array([np.nan]), full.batches, full.latency_s[:1, :1])
