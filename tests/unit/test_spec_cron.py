"""Cron expressions of job schedules: parsing, validation, and next fire times across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.cron import next_fire, parse_cron, zone

NEW_YORK = "America/New_York"


def at(text: str) -> datetime:
    """An aware datetime from ISO text with an offset, e.g. '2024-03-10T02:30-05:00'."""
    return datetime.fromisoformat(text)


@pytest.mark.parametrize("expression, field, values", [
    ("0 3 * * *", "hours", (3,)),
    ("*/15 * * * *", "minutes", (0, 15, 30, 45)),
    ("5/20 * * * *", "minutes", (5, 25, 45)),
    ("1-10/3 * * * *", "minutes", (1, 4, 7, 10)),
    ("0 9-11,14 * * *", "hours", (9, 10, 11, 14)),
    ("0 0 * jan,Mar *", "months", (1, 3)),
    ("0 0 * * MON-FRI", "weekdays", (1, 2, 3, 4, 5)),
    ("0 0 * * sun,7", "weekdays", (0,)),
    ("@hourly", "minutes", (0,)),
    ("@weekly", "weekdays", (0,)),
    ("@yearly", "months", (1,)),
    ("  0   3 * *  * ", "hours", (3,)),
], ids=["a fixed hour", "a step over the whole range", "a start with a step", "a range with a step",
        "a list of a range and a value", "month names in any case", "a range of day names", "Sunday is 0 and 7",
        "@hourly", "@weekly", "@yearly", "extra spaces"])
def test_fields_parse_to_the_values_they_allow(expression: str, field: str, values: tuple[int, ...]) -> None:
    assert getattr(parse_cron(expression), field) == values


@pytest.mark.parametrize("expression, message", [
    ("0 3 * *", "expected 5 fields"),
    ("0 0 3 * * *", "a seconds field is not supported"),
    ("60 * * * *", "minute field: 60 is out of range 0-59"),
    ("0 24 * * *", "hour field: 24 is out of range 0-23"),
    ("0 0 0 * *", "day-of-month field: 0 is out of range 1-31"),
    ("0 0 * 13 *", "month field: 13 is out of range 1-12"),
    ("0 0 * * 8", "day-of-week field: 8 is out of range 0-7"),
    ("0 0 * * MONDAY", "day-of-week field: 'MONDAY' is not a number or a name like SUN"),
    ("*/0 * * * *", "the step in '*/0' must be a whole number of at least 1"),
    ("30-10 * * * *", "the range '30-10' goes backwards"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 ? * *", "'?' is not a number"),
    ("@reboot", "unknown shorthand '@reboot'"),
    ("", "expected 5 fields"),
], ids=["four fields", "six fields", "a minute too large", "an hour too large", "day zero", "month thirteen",
        "day of week eight", "a long day name", "a zero step", "a backwards range", "the 30th of February",
        "Quartz's question mark", "@reboot", "nothing"])
def test_bad_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?").replace("*", r"\*")):
        parse_cron(expression)


@pytest.mark.parametrize("expression, after, fire", [
    ("0 3 * * *", "2024-01-01T02:59:59+00:00", "2024-01-01T03:00:00+00:00"),
    ("0 3 * * *", "2024-01-01T03:00:00+00:00", "2024-01-02T03:00:00+00:00"),
    ("*/15 * * * *", "2024-01-01T10:07:00+00:00", "2024-01-01T10:15:00+00:00"),
    ("59 23 31 12 *", "2024-01-01T00:00:00+00:00", "2024-12-31T23:59:00+00:00"),
    ("0 0 29 2 *", "2024-03-01T00:00:00+00:00", "2028-02-29T00:00:00+00:00"),
    ("0 12 31 * *", "2024-04-01T00:00:00+00:00", "2024-05-31T12:00:00+00:00"),
    ("0 0 13 * FRI", "2024-09-01T00:00:00+00:00", "2024-09-06T00:00:00+00:00"),
    ("0 0 */2 * MON", "2024-09-01T00:00:00+00:00", "2024-09-09T00:00:00+00:00"),
    ("@monthly", "2024-01-31T12:00:00+00:00", "2024-02-01T00:00:00+00:00"),
    ("0 2 * * *", "2024-06-01T00:00:00+02:00", "2024-06-01T02:00:00+00:00"),
], ids=["later the same day", "strictly after: tomorrow", "the next quarter hour", "the last minute of the year",
        "a leap day four years on", "skips a month without a 31st", "day of month or day of week when both are set",
        "a starred day of month narrows by day of week (an odd Monday)", "the first of next month",
        "after is compared as an instant, whatever its offset"])
def test_next_fire_in_utc(expression: str, after: str, fire: str) -> None:
    assert next_fire(expression, at(after), "UTC") == at(fire)


@pytest.mark.parametrize("expression, tz, after, fire", [
    ("30 2 * * *", NEW_YORK, "2024-03-10T00:00-05:00", "2024-03-10T03:00-04:00"),
    ("30 2 * * *", NEW_YORK, "2024-03-10T03:00-04:00", "2024-03-11T02:30-04:00"),
    ("0 3 * * *", NEW_YORK, "2024-03-10T00:00-05:00", "2024-03-10T03:00-04:00"),
    ("30 * * * *", NEW_YORK, "2024-03-10T01:30-05:00", "2024-03-10T03:30-04:00"),
    ("30 1 * * *", NEW_YORK, "2024-11-03T00:00-04:00", "2024-11-03T01:30-04:00"),
    ("30 1 * * *", NEW_YORK, "2024-11-03T01:30-04:00", "2024-11-04T01:30-05:00"),
    ("30 * * * *", NEW_YORK, "2024-11-03T01:30-04:00", "2024-11-03T01:30-05:00"),
    ("*/20 * * * *", NEW_YORK, "2024-11-03T01:50-04:00", "2024-11-03T01:00-05:00"),
    ("15 2 * * *", "Europe/Berlin", "2024-03-31T00:00+01:00", "2024-03-31T03:00+02:00"),
    ("15 2 * * *", "Europe/Berlin", "2024-10-27T00:00+02:00", "2024-10-27T02:15+02:00"),
    ("15 2 * * *", "Europe/Berlin", "2024-10-27T02:15+02:00", "2024-10-28T02:15+01:00"),
    ("15 2 * * *", "Australia/Lord_Howe", "2024-10-06T00:00+10:30", "2024-10-06T02:30+11:00"),
    ("0 9 * * MON-FRI", "Asia/Kolkata", "2024-06-07T10:00+05:30", "2024-06-10T09:00+05:30"),
], ids=["a fixed time skipped by spring forward fires at the jump", "and the next day at its time again",
        "a fixed time right after the jump fires once", "an hourly job has no skipped hour to fire in",
        "a fixed time repeated by fall back fires at its first occurrence",
        "and not at its second occurrence", "an hourly job fires in the repeated hour too",
        "a frequent job goes on into the repeated hour", "Berlin's spring forward",
        "Berlin's fall back fires once", "Berlin's fall back: next is tomorrow",
        "Lord Howe's half-hour jump", "a half-hour offset zone over a weekend"])
def test_next_fire_across_daylight_saving_changes(expression: str, tz: str, after: str, fire: str) -> None:
    found = next_fire(expression, at(after), tz)
    assert found == at(fire) and found.tzinfo == UTC
    assert found.astimezone(zone(tz)).utcoffset() == at(fire).utcoffset(), "the wall time shown would be wrong"


def fires_in_2024(expression: str, tz: str) -> list[datetime]:
    out, moment = [], datetime(2024, 1, 1, tzinfo=zone(tz)).astimezone(UTC) - timedelta(seconds=1)
    end = datetime(2025, 1, 1, tzinfo=zone(tz))
    while (moment := next_fire(expression, moment, tz)) < end:
        out.append(moment)
    return out


def test_a_daily_job_fires_once_on_every_day_of_a_dst_year() -> None:
    fires = fires_in_2024("30 2 * * *", NEW_YORK)
    assert len(fires) == 366 and len({f.astimezone(zone(NEW_YORK)).date() for f in fires}) == 366


def test_an_hourly_job_fires_once_in_every_real_hour_of_a_dst_year() -> None:
    fires = fires_in_2024("0 * * * *", NEW_YORK)
    assert len(fires) == 366 * 24
    gaps = {b - a for a, b in pairwise(fires)}
    assert gaps == {timedelta(hours=1)}


def brute_force(expression: str, after: datetime) -> datetime:
    cron = parse_cron(expression)
    moment = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while not (moment.minute in cron.minutes and moment.hour in cron.hours and cron.matches_day(moment.date())):
        moment += timedelta(minutes=1)
    return moment


@settings(max_examples=60, deadline=None)
@given(minute=st.sampled_from(["*", "*/7", "5", "0,30", "10-20/5"]),
       hour=st.sampled_from(["*", "3", "*/6", "9-17"]),
       weekday=st.sampled_from(["*", "MON-FRI", "SAT"]),
       after=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)))
def test_next_fire_in_utc_agrees_with_checking_every_minute(minute: str, hour: str, weekday: str,
                                                              after: datetime) -> None:
    expression = f"{minute} {hour} * * {weekday}"
    start = after.replace(tzinfo=UTC)
    assert next_fire(expression, start, "UTC") == brute_force(expression, start)


@pytest.mark.parametrize("call, message", [
    (lambda: next_fire("@daily", datetime(2024, 1, 1)), "timezone-aware"),
    (lambda: next_fire("@daily", datetime(2024, 1, 1, tzinfo=UTC), "Mars/Olympus"), "unknown time zone"),
    (lambda: next_fire("bad", datetime(2024, 1, 1, tzinfo=UTC)), "expected 5 fields"),
], ids=["a naive datetime is refused", "an unknown zone is refused", "a bad expression is refused"])
def test_next_fire_refuses_what_it_cannot_answer(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
