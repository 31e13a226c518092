"""Tests of measure.py, how bench.py measures (its runs are exercised by test_bench.py's --quick runs)."""
import pytest

from measure import time_to_reach


def test_time_to_reach_interpolates_between_the_evaluations_around_the_crossing():
    evals = [(0, 0.0, 4.0), (50, 10.0, 2.0), (100, 20.0, 1.8), (150, 30.0, 1.7)]  # (iter, seconds, val)
    assert time_to_reach(evals, 1.88) == pytest.approx(10.0 + 10.0 * 0.12 / 0.2)
    assert time_to_reach(evals, 2.0) == 10.0  # reached exactly at an evaluation
    assert time_to_reach(evals, 1.5) is None
    assert time_to_reach(evals, 5.0) == 0.0  # already there at the first evaluation
