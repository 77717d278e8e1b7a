"""Trace loaders on the real files, against their README figures; upload times by hand, by
property and vectorised (exactly equal to one at a time); malformed files."""

import filecmp
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from graft_fx import GraftError
from graft_fx.serving import (
    Trace, bundled, bundled_names, load_ghent, load_gnettrack, load_mahimahi, load_pensieve,
    load_trace,
)
from graft_fx.serving.traces import _BUNDLED, bundled_direction

SHARED = Path(__file__).parents[2].parent / "shared" / "traces"
BUNDLED_DIR = Path(__file__).parents[2] / "graft_fx" / "serving" / "data" / "traces"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"the real traces live outside the repo, at {SHARED}: not found")

GNETTRACK = """\
Timestamp,Longitude,Latitude,Speed,Operatorname,CellID,NetworkMode,RSRP,RSRQ,SNR,CQI,RSSI,DL_bitrate,UL_bitrate,State
2019.12.16_14.23.32,-8.4612,51.8975,0,OpA,1201,5G,-95,-11,8.0,12,-71,12000,3000,D
2019.12.16_14.23.32,-8.4612,51.8975,0,OpA,1201,5G,-95,-11,8.0,12,-71,14000,5000,D
2019.12.16_14.23.33,-8.4613,51.8976,3,OpA,1201,5G,-96,-12,7.5,11,-72,20000,,D
2019.12.16_14.23.33,-8.4613,51.8976,3,OpA,1201,5G,-96,-12,7.5,11,-72,10000,2000,D
2019.12.16_14.23.35,-8.4615,51.8978,5,OpA,1202,LTE,-101,-13,4.0,9,-75,8000,1000,I
2019.12.16_14.23.36,-8.4616,51.8979,5,OpA,1202,LTE,-,-,-,-,-,-,-,I
2019.12.16_14.23.36,-8.4616,51.8979,5,OpA,1202,LTE,-102,-14,3.5,9,-76,9000,6000,I
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def folder_traces(folder, loader, skip=("LICENSE", "COPYING")):
    return [loader(p) for p in sorted((SHARED / folder).iterdir()) if p.name not in skip]


# --- the real files, against the figures in ../shared/traces/README.md ---

@needs_shared
@pytest.mark.parametrize("folder, files, samples, hours, sample_mean, sample_median, weighted", [
    ("hsdpa-norway", 80, 16475, 5.84, 1.669, 1.437, 1.244),
    ("fcc", 59, 17114, 23.7, 1.306, 0.999, 1.306),
])
def test_pensieve_sets_match_readme(folder, files, samples, hours, sample_mean, sample_median,
                                    weighted):
    traces = folder_traces(folder, load_pensieve)
    mbps = np.concatenate([t.mbps for t in traces])
    duration = sum(t.duration_s for t in traces)  # each file one median step longer than README's
    assert (len(traces), mbps.size) == (files, samples)
    assert duration / 3600 == pytest.approx(hours, rel=0.02)
    assert mbps.mean() == pytest.approx(sample_mean, abs=1e-3)
    assert np.median(mbps) == pytest.approx(sample_median, abs=1e-3)
    assert sum(t.mean_mbps * t.duration_s for t in traces) / duration == pytest.approx(weighted,
                                                                                      rel=0.02)
    assert all(t.source_format == "pensieve" and t.direction == "downlink" for t in traces)
    assert all(t.times_s[0] == 0 for t in traces)


@needs_shared
def test_fcc_steps_and_zeros():
    traces = folder_traces("fcc", load_pensieve)
    assert all(t.step_s == 5.0 and np.all(np.diff(t.times_s) == 5.0) for t in traces)
    assert any(np.any(t.mbps == 0) for t in traces)


@needs_shared
@pytest.mark.parametrize("file, duration, mean", [
    ("Verizon-LTE-short.down", 140.0, 5.03), ("Verizon-LTE-short.up", 140.0, 5.95),
    ("TMobile-LTE-short.down", 140.0, 16.70), ("TMobile-LTE-short.up", 140.0, 13.32),
    ("ATT-LTE-driving-2016.down", 120.0, 4.56), ("ATT-LTE-driving-2016.up", 120.0, 1.91),
])
def test_mahimahi_matches_readme(file, duration, mean):
    trace = load_mahimahi(SHARED / "lte-mahimahi" / file)
    assert trace.duration_s == pytest.approx(duration, rel=0.02)
    assert trace.mean_mbps == pytest.approx(mean, rel=0.02)
    assert trace.direction == ("uplink" if file.endswith(".up") else "downlink")
    assert trace.step_s == 1.0


@needs_shared
def test_mahimahi_counts_every_packet_once():
    """The period is the last timestamp; a line at the period is the next loop's first chance."""
    path = SHARED / "lte-mahimahi" / "Verizon-LTE-short.up"
    lines = len(path.read_text().split())
    trace = load_mahimahi(path)
    assert trace.mean_mbps * trace.duration_s == pytest.approx(lines * 12000 / 1e6, rel=1e-12)


@needs_shared
@pytest.mark.parametrize("file, duration, mean", [
    ("report_car_0003.log", 494, 33.9), ("report_car_0004.log", 581, 28.8),
    ("report_car_0007.log", 191, 38.2), ("report_foot_0001.log", 403, 41.6),
    ("report_foot_0006.log", 584, 22.1),
])
def test_ghent_matches_readme(file, duration, mean):
    trace = load_ghent(SHARED / "lte-ghent" / file)
    assert trace.duration_s == pytest.approx(duration, rel=0.02)
    assert trace.mean_mbps == pytest.approx(mean, rel=0.02)
    assert trace.source_format == "ghent" and trace.direction == "downlink"


# --- G-NetTrack, from a sample written here (no such file is in ../shared/traces) ---

def test_gnettrack_averages_rows_sharing_a_second(tmp_path):
    path = write(tmp_path, "drive.csv", GNETTRACK)
    up = load_gnettrack(path)
    assert up.direction == "uplink" and up.source_format == "gnettrack"
    np.testing.assert_array_equal(up.times_s, [0, 1, 3, 4])  # 14.23.34 has no row: 1 s holds 2 s
    np.testing.assert_allclose(up.mbps, [4.0, 2.0, 1.0, 6.0])  # empty and "-" rows are skipped
    down = load_gnettrack(path, direction="downlink")
    np.testing.assert_allclose(down.mbps, [13.0, 15.0, 8.0, 9.0])
    assert up.duration_s == 5.0 and up.mean_mbps == pytest.approx((4 + 2 * 2 + 1 + 6) / 5)


def test_gnettrack_tab_separated(tmp_path):
    path = write(tmp_path, "drive.txt", GNETTRACK.replace(",", "\t"))
    np.testing.assert_allclose(load_trace(path).mbps, [4.0, 2.0, 1.0, 6.0])


# --- format detection and the bundled copies ---

@needs_shared
@pytest.mark.parametrize("relative, fmt", [
    ("hsdpa-norway/norway_ferry_2", "pensieve"),
    ("fcc/trace_866_http---www.amazon.com", "pensieve"),
    ("lte-mahimahi/ATT-LTE-driving-2016.up", "mahimahi"),
    ("lte-ghent/report_foot_0006.log", "ghent"),
])
def test_auto_detects_real_files(relative, fmt):
    trace = load_trace(SHARED / relative)
    assert trace.source_format == fmt
    loaded = {"pensieve": load_pensieve, "mahimahi": load_mahimahi, "ghent": load_ghent}[fmt]
    np.testing.assert_array_equal(trace.mbps, loaded(SHARED / relative).mbps)


def test_auto_detects_gnettrack_and_passes_direction(tmp_path):
    path = write(tmp_path, "drive.csv", GNETTRACK)
    assert load_trace(path).direction == "uplink"
    assert load_trace(path, direction="downlink").mbps[0] == 13.0


EXPECTED_BUNDLE = {  # name: (format, direction, duration_s, mean_mbps) as loaded
    "3g-norway-bus-1": ("pensieve", "downlink", 155.25, 2.949),
    "3g-norway-train-1": ("pensieve", "downlink", 299.81, 1.234),
    "3g-norway-tram-10": ("pensieve", "downlink", 316.89, 0.938),
    "fcc-10730": ("pensieve", "downlink", 1680.0, 0.490),
    "fcc-8996": ("pensieve", "downlink", 1525.0, 0.512),
    "fcc-942598": ("pensieve", "downlink", 215.0, 0.310),
    "lte-verizon-up": ("mahimahi", "uplink", 140.0, 5.946),
    "lte-verizon-down": ("mahimahi", "downlink", 140.0, 5.028),
    "lte-att-driving-up": ("mahimahi", "uplink", 120.0, 1.910),
    "lte-ghent-car-7": ("ghent", "downlink", 191.38, 38.218),
    "lte-ghent-foot-1": ("ghent", "downlink", 402.71, 41.586),
}


def test_bundled_traces_load_offline():
    assert bundled_names() == list(EXPECTED_BUNDLE)
    for name, (fmt, direction, duration, mean) in EXPECTED_BUNDLE.items():
        trace = bundled(name)
        assert (trace.name, trace.source_format, trace.direction) == (name, fmt, direction)
        assert trace.duration_s == pytest.approx(duration, abs=0.01)
        assert trace.mean_mbps == pytest.approx(mean, abs=1e-3)


def test_bundled_licenses_travel():
    for file in ["hsdpa-norway/LICENSE", "fcc/LICENSE", "lte-mahimahi/COPYING", "README.md"]:
        assert (BUNDLED_DIR / file).is_file()
    assert "GNU GENERAL PUBLIC LICENSE" in (BUNDLED_DIR / "lte-mahimahi" / "COPYING").read_text()
    readme = (BUNDLED_DIR / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in bundled_names())
    total = sum(p.stat().st_size for p in BUNDLED_DIR.rglob("*") if p.is_file())
    assert total < 1.5e6


@needs_shared
def test_bundled_copies_are_byte_for_byte():
    for folder, file in [*_BUNDLED.values(), ("hsdpa-norway", "LICENSE"), ("fcc", "LICENSE"),
                         ("lte-mahimahi", "COPYING")]:
        assert filecmp.cmp(BUNDLED_DIR / folder / file, SHARED / folder / file, shallow=False)


# --- the model: at(), mean, upload times ---

def test_at_and_mean_are_piecewise_constant_and_loop():
    trace = Trace("steps", [0, 1, 3], [2, 4, 6], "test")  # last step: median of (1, 2) = 1.5 s
    assert trace.duration_s == 4.5
    assert trace.mean_mbps == pytest.approx((2 * 1 + 4 * 2 + 6 * 1.5) / 4.5)
    assert [trace.at(t) for t in (0, 0.99, 1, 2.9, 3, 4.4, 4.5, 5.6)] == [2, 2, 4, 4, 6, 6, 2, 4]
    np.testing.assert_array_equal(trace.at(np.array([0.5, 1.5, 9.0 + 3.5])), [2, 4, 6])


def test_upload_time_by_hand():
    constant = Trace("8 Mbps", [0], [8], "test")  # one sample: holds for 1 s, then loops
    assert constant.upload_time_s(1e6) == 1.0  # 1 MB = 8 Mbit
    assert constant.upload_time_s(1e6, start_s=0.3) == pytest.approx(1.0)
    assert constant.upload_time_s(2.5e6, start_s=7.25) == pytest.approx(2.5)
    assert constant.upload_time_s(0, start_s=3.0) == 0.0

    steps = Trace("8 then 16", [0, 1], [8, 16], "test")  # 24 Mbit per 2 s loop
    assert steps.upload_time_s(2e6) == pytest.approx(1.5)  # 8 Mbit in 1 s, then 8 at 16 Mbps
    assert steps.upload_time_s(2e6, start_s=0.5) == pytest.approx(1.25)
    assert steps.upload_time_s(6e6, start_s=1.5) == pytest.approx(4.0)  # loops once and a half

    gap = Trace("8, 0, 8", [0, 1, 2], [8, 0, 8], "test")
    assert gap.upload_time_s(1e6) == 1.0  # ends as the zero stretch begins
    assert gap.upload_time_s(1e6, start_s=1.0) == 2.0  # waits the zero second out
    assert gap.upload_time_s(1e6, start_s=1.5) == 1.5
    assert gap.upload_time_s(2e6) == 3.0  # = 1 MB, then 1 MB back-to-back
    assert gap.upload_time_s(0.5e6, start_s=0.5) == 0.5

    trailing = Trace("8, 0", [0, 1], [8, 0], "test")
    assert trailing.upload_time_s(1e6, start_s=1.0) == 2.0  # waits for the next loop
    assert trailing.upload_time_s(2e6) == 3.0


def test_upload_errors():
    with pytest.raises(GraftError, match="zero bandwidth throughout"):
        Trace("dead", [0, 5], [0, 0], "test").upload_time_s(1)
    with pytest.raises(GraftError, match="non-negative size"):
        Trace("live", [0], [1], "test").upload_time_s(-1)


def reference_upload_s(trace, nbytes, start_s):
    """Walk the segments one by one, looping, until the bits are sent."""
    edges = np.append(trace.times_s, trace.duration_s)
    loop, u = divmod(start_s, trace.duration_s)
    i = int(np.searchsorted(trace.times_s, u, side="right")) - 1
    t, left = start_s, nbytes * 8 / 1e6
    while True:
        end = loop * trace.duration_s + edges[i + 1]
        if trace.mbps[i] * (end - t) >= left:
            return t + left / trace.mbps[i] - start_s
        left -= trace.mbps[i] * (end - t)
        t, i = end, i + 1
        if i == len(trace.mbps):
            loop, i = loop + 1, 0


def traces(min_rate):
    """Integer steps and rates keep cumulative bits exact, so end times agree to rounding."""
    return st.integers(1, 6).flatmap(lambda n: st.tuples(
        st.lists(st.integers(1, 5), min_size=n, max_size=n),
        st.lists(st.integers(min_rate, 20), min_size=n, max_size=n),
    )).filter(lambda steps_rates: any(steps_rates[1])).map(lambda steps_rates: Trace(
        "drawn", np.cumsum([0, *steps_rates[0][:-1]]), steps_rates[1], "test"))


sizes = st.integers(0, 5 * 10**7)
starts = st.integers(0, 200)


@given(traces(min_rate=0), sizes, sizes, starts)
def test_upload_time_is_nonnegative_monotone_and_matches_a_walk(trace, a, b, start):
    t_a, t_ab = trace.upload_time_s(a, start), trace.upload_time_s(a + b, start)
    assert 0 <= t_a <= t_ab + 1e-9
    if a:
        assert t_a == pytest.approx(reference_upload_s(trace, a, start), rel=1e-9, abs=1e-9)


@given(traces(min_rate=1), sizes, sizes, starts)
def test_back_to_back_uploads_add_up(trace, a, b, start):
    """Zero stretches are left out here: there, rounding at the stretch's edge decides whether an
    upload waits it out (the exact case is in test_upload_time_by_hand)."""
    t_a = trace.upload_time_s(a, start)
    assert t_a + trace.upload_time_s(b, start + t_a) == pytest.approx(
        trace.upload_time_s(a + b, start), rel=1e-9, abs=1e-9)


def one_upload_s(trace, nbytes, start_s):
    """`upload_time_s` as it was before it was vectorised, one start at a time in Python floats:
    the vectorised times must equal it bit for bit."""
    if nbytes == 0:
        return 0.0
    cum, per_loop = trace._cum_mbit, trace._cum_mbit[-1]
    loops, u = divmod(float(start_s), trace.duration_s)
    i = int(np.searchsorted(trace.times_s, u, side="right")) - 1
    mbit = loops * per_loop + cum[i] + trace.mbps[i] * (u - trace.times_s[i]) + nbytes * 8 / 1e6
    loops, rest = divmod(mbit, per_loop)
    if rest == 0:
        loops, rest = loops - 1, per_loop
    i = int(np.searchsorted(cum, rest, side="left")) - 1
    end_s = loops * trace.duration_s + trace.times_s[i] + (rest - cum[i]) / trace.mbps[i]
    return max(float(end_s - start_s), 0.0)


rates = st.one_of(st.just(0.0), st.floats(0.01, 50.0), st.integers(0, 20).map(float))
float_traces = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.lists(st.one_of(st.floats(0.05, 5.0), st.integers(1, 5).map(float)), min_size=n, max_size=n),
    st.lists(rates, min_size=n, max_size=n),
)).filter(lambda steps_rates: any(steps_rates[1])).map(lambda steps_rates: Trace(
    "drawn", np.cumsum([0.0, *steps_rates[0][:-1]]), steps_rates[1], "test"))


@st.composite
def uploads(draw):
    """A trace with zero stretches, a size and starts, aimed at its edges: starts on its sample
    times in some loop, sizes that end an upload exactly on a sample time or a loop's end."""
    trace = draw(st.one_of(traces(min_rate=0), float_traces))
    cum_bytes = trace._cum_mbit * 1e6 / 8
    loop = trace.duration_s * draw(st.integers(-2, 5))
    nbytes = draw(st.one_of(sizes, st.floats(0, 1e7), st.sampled_from([0, *cum_bytes]),
                            st.integers(1, 4).map(lambda k: k * float(cum_bytes[-1]))))
    edges = st.sampled_from([*trace.times_s, trace.duration_s]).map(lambda t: t + loop)
    at = draw(st.lists(st.one_of(st.floats(-100, 500), starts, edges), max_size=12))
    return trace, nbytes, np.array(at, dtype=np.float64)


@given(uploads())
def test_upload_times_equal_one_upload_at_a_time_exactly(upload):
    trace, nbytes, starts = upload
    expected = [one_upload_s(trace, nbytes, s) for s in starts]
    times = trace.upload_times_s(nbytes, starts)
    assert times.shape == starts.shape and times.dtype == np.float64
    assert times.tolist() == expected
    assert [trace.upload_time_s(nbytes, s) for s in starts] == expected


@given(uploads(), st.lists(sizes, min_size=1, max_size=4))
def test_sizes_and_starts_broadcast(upload, more_sizes):
    trace, nbytes, starts = upload
    every_size = np.array([nbytes, *more_sizes])
    times = trace.upload_times_s(every_size[:, None], starts[None, :])
    assert times.shape == (len(every_size), len(starts))
    assert times.tolist() == [[one_upload_s(trace, b, s) for s in starts] for b in every_size.tolist()]


@pytest.mark.parametrize("name", ["lte-ghent-car-7", "3g-norway-bus-1", "fcc-8996", "lte-verizon-up"])
def test_upload_times_on_bundled_traces_equal_one_at_a_time(name):
    """Real rates round where drawn integer ones do not: this catches any reordered arithmetic."""
    trace, rng = bundled(name), np.random.default_rng(0)
    starts = np.concatenate((rng.uniform(-trace.duration_s, 3 * trace.duration_s, 400),
                             trace.times_s[::7] + trace.duration_s))
    for nbytes in (100, 20_000, 150_000, 10**6, 10**7):
        expected = [one_upload_s(trace, nbytes, s) for s in starts]
        assert trace.upload_times_s(nbytes, starts).tolist() == expected


def test_upload_times_at_the_edges():
    trailing = Trace("8, 0", [0, 1], [8, 0], "test")  # 8 Mbit per 2 s loop, dead in its second half
    starts = np.array([0.0, 1.0, 1.5, 2.0, 4.0, -2.0, 3.0])
    # 1 MB is one loop's bits: it ends as the loop's live second does, not a loop later.
    assert trailing.upload_times_s(1e6, starts).tolist() == [1.0, 2.0, 1.5, 1.0, 1.0, 1.0, 2.0]
    assert trailing.upload_times_s(2e6, starts).tolist() == [3.0, 4.0, 3.5, 3.0, 3.0, 3.0, 4.0]
    zeros = trailing.upload_times_s(0, np.ones((2, 3)))
    assert zeros.shape == (2, 3) and not zeros.any()
    assert trailing.upload_times_s(1e6, np.zeros(0)).shape == (0,)
    assert trailing.upload_times_s(np.array([0, 1e6]), 1.5).tolist() == [0.0, 1.5]


@pytest.mark.parametrize("nbytes, message", [
    (-1, "upload of -1 bytes: expected a non-negative size"), (float("nan"), "upload of nan bytes"),
    (np.array([1, -1]), "expected a non-negative size")])
def test_upload_times_reject_bad_sizes(nbytes, message):
    with pytest.raises(GraftError, match=re.escape(message)):
        Trace("live", [0], [1], "test").upload_times_s(nbytes, np.arange(3.0))


def test_upload_times_need_some_bandwidth():
    with pytest.raises(GraftError, match="'dead' has zero bandwidth throughout"):
        Trace("dead", [0, 5], [0, 0], "test").upload_times_s(1, np.arange(3.0))


# --- malformed files ---

@pytest.mark.parametrize("loader, text, line, expected", [
    (load_pensieve, "0 1\n1 abc\n", 2, "2 number columns (time_s Mbps)"),
    (load_pensieve, "0 1\n\n1 2 3\n", 3, "2 number columns"),
    (load_pensieve, "0 1\n2 1\n2 3\n", 3, "time_s larger than on the line before"),
    (load_pensieve, "0 1\n1 -2\n", 2, "non-negative Mbps"),
    (load_pensieve, "0 1\n1 nan\n", 2, "all finite"),
    (load_mahimahi, "1\n5\n3\n", 3, "no smaller than on the line before"),
    (load_mahimahi, "1\n2.5\n", 2, "1 integer column (ms)"),
    (load_mahimahi, "-1\n2\n", 1, "non-negative timestamp"),
    (load_ghent, "0 100 51 3 0 100\n0 100 51 3 10 1000\n", 2, "ms_since_start larger"),
    (load_ghent, "0 100 51 3 0 0\n", 1, "positive ms_since_last"),
    (load_ghent, "0 100 51 3 -5 100\n", 1, "non-negative bytes_since_last"),
    (load_ghent, "0 100 51 3 0\n", 1, "6 number columns (epoch_ms ms_since_start"),
])
def test_malformed_numeric_files(tmp_path, loader, text, line, expected):
    path = write(tmp_path, "bad.trace", text)
    pattern = f"bad.trace, line {line}: expected .*{re.escape(expected)}"
    with pytest.raises(GraftError, match=pattern):
        loader(path)


def test_mahimahi_needs_a_period(tmp_path):
    with pytest.raises(GraftError, match="zeros.up: expected a last timestamp above 0"):
        load_mahimahi(write(tmp_path, "zeros.up", "0\n0\n"))


@pytest.mark.parametrize("loader", [load_pensieve, load_mahimahi, load_ghent, load_gnettrack,
                                    load_trace])
def test_empty_files(tmp_path, loader):
    with pytest.raises(GraftError, match="empty.txt: empty file, expected"):
        loader(write(tmp_path, "empty.txt", "\n \n" if loader is not load_gnettrack else ""))


HEADER = GNETTRACK.splitlines()[0]
ROW = GNETTRACK.splitlines()[1]


@pytest.mark.parametrize("text, message", [
    (HEADER.replace("UL_bitrate", "UL") + "\n" + ROW, "line 1: expected a header with Timestamp "
                                                      "and UL_bitrate columns, missing UL_bitrate"),
    (HEADER + "\n" + ROW.replace("2019.12.16_14.23.32", "16/12/2019 14:23:32"),
     "line 2: expected a Timestamp like 2019.12.16_14.23.32"),
    (HEADER + "\n" + ROW + "\n" + ROW.replace(",3000,", ",fast,"),
     "line 3: expected a non-negative UL_bitrate in kbit/s, got 'fast'"),
    (HEADER + "\n" + ROW + "\n" + ROW.replace(",3000,", ",-3000,"), "line 3: expected a non-neg"),
    (HEADER + "\n" + ROW + ",extra", "line 2: expected 15 columns as in the header, got 16"),
    (HEADER + "\n" + ROW + "\n" + ROW.replace("14.23.32", "14.23.31"),
     "line 3: expected a Timestamp no earlier than on the row before"),
    (HEADER + "\n" + ROW.replace(",3000,", ",,"), "expected rows with both a Timestamp and a "
                                                  "UL_bitrate, found none"),
])
def test_malformed_gnettrack(tmp_path, text, message):
    with pytest.raises(GraftError, match=f"drive.csv.*{re.escape(message)}"):
        load_gnettrack(write(tmp_path, "drive.csv", text))


def test_bad_arguments(tmp_path):
    with pytest.raises(GraftError, match="line 1: cannot tell the trace format"):
        load_trace(write(tmp_path, "odd.txt", "0.5\n"))
    with pytest.raises(GraftError, match="trace format 'csv': expected auto, gnettrack or"):
        load_trace(write(tmp_path, "x.txt", "0 1\n"), format="csv")
    with pytest.raises(GraftError, match="direction 'sideways'"):
        load_gnettrack(write(tmp_path, "drive.csv", GNETTRACK), direction="sideways")
    with pytest.raises(GraftError, match="bundled trace 'nope': expected one of 3g-norway-bus-1"):
        bundled("nope")
    with pytest.raises(GraftError, match="times_s strictly increasing from 0"):
        Trace("late", [1, 2], [1, 1], "test")
    with pytest.raises(GraftError, match="non-negative mbps"):
        Trace("neg", [0, 1], [1, -1], "test")
    with pytest.raises(GraftError, match="direction one of"):
        Trace("x", [0], [1], "test", direction="up")


def test_bundled_directions_match_the_loaded_traces():
    for name in bundled_names():
        assert bundled_direction(name) == bundled(name).direction
