"""Schedules are pure functions of the epoch: phases at given epochs, final_epoch, validation."""
from __future__ import annotations

import pytest

from pruners.schedules import AGP, SCHEDULES, OneShot, Phase, Regrow, get_schedule


def test_registry_names():
    assert set(SCHEDULES) == {"oneshot", "regrow", "agp"}
    assert SCHEDULES["agp"] is AGP


def test_oneshot():
    s = get_schedule("oneshot")
    assert isinstance(s, OneShot) and s.final_epoch == 0
    assert s.phase(0) == Phase(1.0, True, True)
    assert s.phase(1) == Phase(1.0, False, True)
    assert s.phase(57) == Phase(1.0, False, True)


def test_regrow_seed_defaults():
    s = get_schedule("regrow", prune_freq=5, retrain_epoch=50)
    assert isinstance(s, Regrow) and s.final_epoch == 50
    assert s.phase(0) == Phase(1.0, True, False)
    assert s.phase(1) == Phase(1.0, False, False)
    assert s.phase(5) == Phase(1.0, True, False)
    assert s.phase(45) == Phase(1.0, True, False)
    assert s.phase(49) == Phase(1.0, False, False)
    assert s.phase(50) == Phase(1.0, True, True)
    assert s.phase(51) == Phase(1.0, False, True)
    assert s.phase(55) == Phase(1.0, False, True)


def test_regrow_retrain_not_multiple_of_freq():
    s = Regrow(prune_freq=3, retrain_epoch=7)
    assert [s.phase(e).recompute for e in range(10)] == [True, False, False, True, False, False, True, True, False, False]
    assert [s.phase(e).enforce for e in range(10)] == [False] * 7 + [True] * 3


def test_agp_cubic_values_by_hand():
    s = get_schedule("agp", start_epoch=2, end_epoch=6)
    assert s.final_epoch == 6
    assert s.phase(0) == Phase(0.0, False, True)
    assert s.phase(1) == Phase(0.0, False, True)
    # fraction = 1 - (1 - (t - 2) / 4) ** 3
    assert s.phase(2) == Phase(0.0, True, True)
    assert s.phase(3).fraction == pytest.approx(1 - 0.75**3)  # 0.578125
    assert s.phase(3).fraction == pytest.approx(0.578125)
    assert s.phase(4).fraction == pytest.approx(0.875)
    assert s.phase(5).fraction == pytest.approx(0.984375)
    assert s.phase(6) == Phase(1.0, True, True)
    assert s.phase(7) == Phase(1.0, False, True)
    assert all(s.phase(e).recompute for e in range(2, 7))


def test_agp_initial_and_frequency():
    s = AGP(start_epoch=0, end_epoch=10, frequency=3, initial=0.5)
    # fraction at recompute epochs t: 1 - 0.5 * (1 - t/10) ** 3; held until the next recompute.
    assert s.phase(0) == Phase(0.5, True, True)
    assert s.phase(1) == Phase(0.5, False, True)
    assert s.phase(2) == Phase(0.5, False, True)
    assert s.phase(3).recompute and s.phase(3).fraction == pytest.approx(1 - 0.5 * 0.7**3)  # 0.8285
    assert s.phase(5).fraction == pytest.approx(0.8285) and not s.phase(5).recompute
    assert s.phase(6).fraction == pytest.approx(1 - 0.5 * 0.4**3)  # 0.968
    assert s.phase(9).fraction == pytest.approx(1 - 0.5 * 0.1**3)  # 0.9995
    assert s.phase(10) == Phase(1.0, True, True)  # end_epoch is always a recompute
    assert [e for e in range(15) if s.phase(e).recompute] == [0, 3, 6, 9, 10]
    assert s.fraction_at(-5) == 0.5 and s.fraction_at(99) == 1.0


def test_agp_fraction_is_monotone():
    s = AGP(start_epoch=1, end_epoch=20, frequency=2)
    fr = [s.phase(e).fraction for e in range(25)]
    assert fr == sorted(fr) and fr[-1] == 1.0


@pytest.mark.parametrize(
    "params, match",
    [
        ({"start_epoch": 5, "end_epoch": 5}, "end_epoch"),
        ({"end_epoch": 5, "frequency": 0}, "frequency"),
        ({"end_epoch": 5, "initial": 1.0}, "initial"),
        ({"end_epoch": 5, "initial": -0.1}, "initial"),
        ({"end_epoch": 5, "epochs": 3}, "epochs"),
        ({}, "end_epoch"),
    ],
)
def test_agp_validation(params, match):
    with pytest.raises(ValueError, match=match):
        get_schedule("agp", **params)


def test_regrow_validation():
    with pytest.raises(ValueError, match="prune_freq"):
        get_schedule("regrow", prune_freq=0, retrain_epoch=5)
    with pytest.raises(ValueError, match="retrain_epoch"):
        get_schedule("regrow", prune_freq=1)
    with pytest.raises(ValueError, match="oneshot"):
        get_schedule("oneshot", end_epoch=3)


def test_unknown_schedule_suggests_nearest():
    with pytest.raises(ValueError, match="did you mean 'regrow'"):
        get_schedule("regrw")


def test_get_schedule_accepts_objects_and_mappings():
    s = AGP(end_epoch=4)
    assert get_schedule(s) is s
    assert get_schedule({"name": "agp", "end_epoch": 4}) == s
    with pytest.raises(ValueError):
        get_schedule(s, end_epoch=5)
    with pytest.raises(ValueError):
        get_schedule(42)


def test_negative_epoch_rejected():
    with pytest.raises(ValueError, match="epoch"):
        OneShot().phase(-1)


def test_schedules_are_frozen():
    s = Regrow(prune_freq=2, retrain_epoch=4)
    with pytest.raises(Exception):
        s.prune_freq = 3  # type: ignore[misc]
