"""The pace a partition learns from its batches: the median of the last few ratios, clamped."""

from graft_fx.serving.pace import MAX_PACE, WINDOW, Pace


def test_a_fresh_pace_is_one_and_reports_no_batches():
    pace = Pace()
    assert pace.factor == 1.0 and pace.summary() == {"batches": 0, "p50": None, "p90": None, "max": None}


def test_a_sustained_slowdown_raises_the_pace_after_most_of_the_window():
    pace = Pace()
    changed = [pace.observe(2.0, 1.0) for _ in range(WINDOW)]
    assert changed.index(True) == WINDOW // 2  # the median turns once most of the window is slow
    assert pace.factor == 2.0


def test_a_single_stall_moves_nothing():
    pace = Pace()
    for _ in range(WINDOW):
        pace.observe(1.0, 1.0)
    assert not pace.observe(30.0, 1.0) and pace.factor == 1.0


def test_the_pace_never_goes_below_one_nor_above_the_cap():
    pace = Pace()
    for _ in range(WINDOW):
        pace.observe(0.5, 1.0)
    assert pace.factor == 1.0
    for _ in range(WINDOW):
        pace.observe(100.0, 1.0)
    assert pace.factor == MAX_PACE


def test_the_pace_returns_when_the_host_recovers():
    pace = Pace()
    for _ in range(WINDOW):
        pace.observe(3.0, 1.0)
    for _ in range(WINDOW):
        pace.observe(0.9, 1.0)
    assert pace.factor == 1.0


def test_small_changes_leave_the_prices_alone():
    pace = Pace()
    for _ in range(WINDOW):
        pace.observe(2.0, 1.0)
    assert not pace.observe(2.05, 1.0) and pace.factor == 2.0


def test_the_summary_describes_every_ratio_recorded():
    pace = Pace()
    for ratio in (1.0, 2.0, 3.0, 4.0):
        pace.observe(ratio, 1.0)
    assert not pace.observe(1.0, 0.0)  # no price: nothing to learn, nothing recorded
    s = pace.summary()
    assert s["batches"] == 4 and s["p50"] == 2.5 and s["max"] == 4.0
