"""Settings.from_env: defaults, and a clear error naming the variable for every bad value."""

from __future__ import annotations

import pytest

from datamaster_assets.settings import Settings, _number


def test_defaults():
    s = Settings.from_env({})
    assert (s.env, s.max_attempts, s.orphan_min_age_days, s.snapshot_retain_last) == ("local", 3, 3, 5)
    assert s.reject_rate_threshold == 0.05


def test_values_are_read_from_the_environment():
    s = Settings.from_env({"DATAMASTER_ORPHAN_MIN_AGE_DAYS": "1", "DATAMASTER_SNAPSHOT_MAX_AGE_DAYS": "0",
                           "DATAMASTER_REJECT_RATE_THRESHOLD": "0.2", "DATAMASTER_EMR_MIN_CHANGE_ROWS": "0"})
    assert (s.orphan_min_age_days, s.snapshot_max_age_days, s.reject_rate_threshold, s.emr_min_change_rows) == (1, 0, 0.2, 0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATAMASTER_ORPHAN_MIN_AGE_DAYS", "0", "DATAMASTER_ORPHAN_MIN_AGE_DAYS must be at least 1, got 0"),
        ("DATAMASTER_SNAPSHOT_RETAIN_LAST", "0", "DATAMASTER_SNAPSHOT_RETAIN_LAST must be at least 1, got 0"),
        ("DATAMASTER_SNAPSHOT_MAX_AGE_DAYS", "-1", "DATAMASTER_SNAPSHOT_MAX_AGE_DAYS must be at least 0, got -1"),
        ("DATAMASTER_MAX_ATTEMPTS", "0", "DATAMASTER_MAX_ATTEMPTS must be at least 1, got 0"),
        ("DATAMASTER_LEASE_SECONDS", "-5", "DATAMASTER_LEASE_SECONDS must be at least 1, got -5"),
        ("DATAMASTER_BRONZE_BATCH_ROWS", "ten", "DATAMASTER_BRONZE_BATCH_ROWS must be an integer, got 'ten'"),
        ("DATAMASTER_REJECT_RATE_THRESHOLD", "5%", "DATAMASTER_REJECT_RATE_THRESHOLD must be a number, got '5%'"),
        ("DATAMASTER_REJECT_RATE_THRESHOLD", "1.5", "DATAMASTER_REJECT_RATE_THRESHOLD must be between 0 and 1, got 1.5"),
        ("DATAMASTER_ECS_ASSIGN_PUBLIC_IP", "maybe", "DATAMASTER_ECS_ASSIGN_PUBLIC_IP must be true or false, got 'maybe'"),
        ("DATAMASTER_REJECT_RATE_THRESHOLD", "nan", "DATAMASTER_REJECT_RATE_THRESHOLD must be between 0 and 1, got nan"),
        ("DATAMASTER_ENV", "prod", "DATAMASTER_ENV must be 'local' or 'aws', got 'prod'"),
    ],
)
def test_bad_values_name_the_variable(name, value, message):
    with pytest.raises(ValueError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value) == message



@pytest.mark.parametrize(
    ("bounds", "convert", "raw", "message"),
    [
        ({"maximum": 10}, int, "11", "X must be at most 10, got 11"),
        ({"minimum": 0.0}, float, "nan", "X must be at least 0.0, got nan"),
        ({"maximum": 1.0}, float, "nan", "X must be at most 1.0, got nan"),
    ],
)
def test_one_sided_bounds_refuse_values_outside_them(bounds, convert, raw, message):
    with pytest.raises(ValueError) as caught:
        _number({"X": raw}, "X", 0, convert, **bounds)
    assert str(caught.value) == message
    assert _number({"X": "0"}, "X", 5, convert, **bounds) == 0
