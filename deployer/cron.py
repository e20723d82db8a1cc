"""Cron expressions: parse and validate them, and compute the next fire time in a time zone.

Five fields (minute hour day-of-month month day-of-week) with lists, ranges, steps and the names
JAN-DEC and SUN-SAT, or a shorthand (@hourly, @daily, @weekly, @monthly, @yearly). As in Vixie cron,
when both day fields are restricted a day matching either one fires.

Daylight saving time, decided once here so every caller agrees:
- a job with a fixed hour ("30 2 * * *") fires once per day: a wall time skipped by a spring-forward
  jump fires at the jump, and a wall time repeated by a fall-back fires at its first occurrence;
- a job whose hour field starts with '*' ("*/15 * * * *") follows real time: skipped wall times do not
  exist and repeated ones fire twice, so it never goes an hour without firing.

Pure: `next_fire` takes the time it counts from; nothing here reads a clock.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SHORTHANDS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))
MONTH_NAMES = {n: i for i, n in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}
DAY_NAMES = {n: i for i, n in enumerate("SUN MON TUE WED THU FRI SAT".split())}
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February can have 29
_MAX_DAYS = 366 * 30  # far beyond any valid expression's longest gap between fire days


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the allowed values of each field, sorted."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday
    any_day: bool  # day-of-month field starts with '*'
    any_weekday: bool  # day-of-week field starts with '*'
    follows_real_time: bool  # hour field starts with '*': see the DST rules above

    @property
    def times(self) -> tuple[int, ...]:
        """Minutes after midnight at which the expression fires on a matching day, sorted."""
        return tuple(h * 60 + m for h in self.hours for m in self.minutes)

    def matches_day(self, day: date) -> bool:
        """True when the expression fires on this calendar day."""
        if day.month not in self.months:
            return False
        by_date = day.day in self.days
        by_weekday = (day.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return by_date and by_weekday
        return by_date or by_weekday


@lru_cache(maxsize=256)
def parse_cron(expression: str) -> Cron:
    """Parse and validate a cron expression.

    Raises:
        ValueError: a wrong field count, an unknown name, a value out of range, a zero step, a
            backwards range, or a date that never exists; the message names the field.
    """
    text = " ".join(expression.split())
    fields = SHORTHANDS.get(text.lower(), text).split(" ")
    if text.startswith("@") and text.lower() not in SHORTHANDS:
        raise ValueError(f"unknown shorthand {text!r}: expected one of {', '.join(sorted(SHORTHANDS))}")
    if len(fields) != 5:
        extra = " (a seconds field is not supported)" if len(fields) == 6 else ""
        raise ValueError(f"expected 5 fields (minute hour day-of-month month day-of-week) or a shorthand "
                         f"like @daily, got {len(fields)}{extra}")
    values = [_field(item, name, low, high) for item, (name, low, high) in zip(fields, FIELDS)]
    minutes, hours, days, months, weekdays = values
    cron = Cron(expression, minutes, hours, days, months, tuple(sorted({d % 7 for d in weekdays})),
                any_day=fields[2].startswith("*"), any_weekday=fields[4].startswith("*"),
                follows_real_time=fields[1].startswith("*"))
    _check_date_exists(cron)
    return cron


def _field(text: str, name: str, low: int, high: int) -> tuple[int, ...]:
    found: set[int] = set()
    for item in text.split(","):
        found.update(_item(item, name, low, high))
    return tuple(sorted(found))


def _item(item: str, name: str, low: int, high: int) -> range:
    part, slash, step_text = item.partition("/")
    step = int(step_text) if step_text.isdigit() else 0 if slash else 1
    if step < 1:
        raise ValueError(f"{name} field: the step in {item!r} must be a whole number of at least 1")
    if part == "*":
        return range(low, high + 1, step)
    first_text, dash, last_text = part.partition("-")
    first = _number(first_text, name, low, high)
    last = _number(last_text, name, low, high) if dash else (high if step_text else first)
    if last < first:
        raise ValueError(f"{name} field: the range {part!r} goes backwards; write it as two ranges")
    return range(first, last + 1, step)


def _number(text: str, name: str, low: int, high: int) -> int:
    names = MONTH_NAMES if name == "month" else DAY_NAMES if name == "day-of-week" else {}
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        hint = f" or a name like {next(iter(names))}" if names else ""
        raise ValueError(f"{name} field: {text!r} is not a number{hint}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name} field: {value} is out of range {low}-{high}")
    return value


def _check_date_exists(cron: Cron) -> None:
    if cron.any_day or not cron.any_weekday:
        return  # every day, or a day-of-week that can match instead
    if not any(day <= _MONTH_DAYS[month - 1] for month in cron.months for day in cron.days):
        raise ValueError(f"never fires: none of the months has day {cron.days[0]}")


def zone(name: str | tzinfo) -> tzinfo:
    """The tzinfo for an IANA time zone name such as "UTC" or "Europe/Berlin".

    Raises:
        ValueError: unknown time zone.
    """
    if isinstance(name, tzinfo):
        return name
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name like 'UTC' or 'Europe/Berlin'") from None


def next_fire(cron: Cron | str, after: datetime, tz: str | tzinfo = "UTC") -> datetime:
    """The first fire time strictly after `after` (timezone-aware), the fields read in time zone tz.

    The answer is an aware UTC datetime: unlike a local time inside a repeated (fall-back) hour, it
    compares equal to the same instant in any zone. `.astimezone(zone(tz))` gives the wall time.

    Raises:
        ValueError: an invalid expression or zone, or a naive `after`.
    """
    if after.tzinfo is None:
        raise ValueError("next_fire needs a timezone-aware datetime")
    cron = parse_cron(cron) if isinstance(cron, str) else cron
    where = zone(tz)
    after_utc = after.astimezone(UTC)
    day = after_utc.astimezone(where).date()
    for _ in range(_MAX_DAYS):
        if cron.matches_day(day):
            found = _first_on_day(cron, day, where, after_utc)
            if found is not None:
                return found
        day += timedelta(days=1)
    raise ValueError(f"{cron.expression!r} does not fire within {_MAX_DAYS // 366} years")  # pragma: no cover


def _first_on_day(cron: Cron, day: date, where: tzinfo, after: datetime) -> datetime | None:
    times = cron.times
    if _is_steady(day, where):  # no DST change today: wall time order is real time order
        wall = after.astimezone(where)
        start = bisect.bisect_right(times, wall.hour * 60 + wall.minute) if wall.date() == day else 0
        for minute_of_day in times[start:]:
            moment = _at(day, minute_of_day, where, fold=0)
            if moment > after:
                return moment
        return None
    moments = sorted(m for t in times for m in _moments(cron, day, t, where))
    return next((m for m in moments if m > after), None)


def _moments(cron: Cron, day: date, minute_of_day: int, where: tzinfo) -> list[datetime]:
    first, second = _at(day, minute_of_day, where, 0), _at(day, minute_of_day, where, 1)
    wall = datetime.combine(day, time(minute_of_day // 60, minute_of_day % 60))
    if first.astimezone(where).replace(tzinfo=None) != wall:  # skipped by a spring-forward jump
        return [] if cron.follows_real_time else [_end_of_gap(wall, where)]
    if first != second:  # repeated by a fall-back
        return [first, second] if cron.follows_real_time else [first]
    return [first]


def _end_of_gap(wall: datetime, where: tzinfo) -> datetime:
    """The real moment a skipped wall time falls into: the first existing minute after it."""
    for _ in range(48 * 60):
        wall += timedelta(minutes=1)
        moment = wall.replace(tzinfo=where).astimezone(UTC)
        if moment.astimezone(where).replace(tzinfo=None) == wall:
            return moment
    raise ValueError(f"no time after {wall} exists in {where}")  # pragma: no cover


def _at(day: date, minute_of_day: int, where: tzinfo, fold: int) -> datetime:
    local = datetime.combine(day, time(minute_of_day // 60, minute_of_day % 60, fold=fold), tzinfo=where)
    return local.astimezone(UTC)


def _is_steady(day: date, where: tzinfo) -> bool:
    offsets = {where.utcoffset(datetime.combine(d, time(0, fold=f)))
               for d in (day, day + timedelta(days=1)) for f in (0, 1)}
    return len(offsets) == 1
