"""Cron schedules for scheduled services (`[services.NAME] schedule = "*/15 * * * *"` in disco.toml).

Five fields, minute hour day-of-month month day-of-week, always in UTC, with Vixie cron's rule
for days: when both day fields are restricted, a day matches if either does. parse_schedule
refuses what it cannot read, and schedules that can never fire, with a message that names the
field and the fix, so a push can be refused before anything is scheduled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise

MAX_TEXT = 200  # a schedule is a few characters; a long one is a mistake or an attack
LOOKBACK_YEARS = 5  # how far previous_at_or_before looks back
# The Gregorian calendar, weekdays included, repeats every 400 years (146097 days, a multiple
# of 7), so a schedule that can fire at all fires within any 400-year window.
CALENDAR_CYCLE = timedelta(days=146097)
FIVE_FIELDS = "minute hour day-of-month month day-of-week, like '*/15 * * * *'"
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NUMBER = re.compile(r"[0-9]+")
_WORD = re.compile(r"[A-Za-z]+")
_LONGEST_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


class CronError(ValueError):
    """A schedule that cannot be read; the message names the field and what is wrong."""


@dataclass(frozen=True)
class _Field:
    label: str
    lo: int
    hi: int  # the highest value that may be written (7 for day-of-week: Sunday again)
    top: int  # where `*` and `a/n` stop (6 for day-of-week, so Sunday is not counted twice)
    names: tuple[str, ...] = ()  # names[i] stands for lo + i, or i + 1 for months

    def allowed(self) -> str:
        text = f"{self.lo} to {self.hi}"
        if self.hi != self.top:
            text += " (0 and 7 are Sunday)"
        if self.names:
            text += f" or {self.names[0]} to {self.names[-1]}"
        return text

    def value_of_name(self, name: str) -> int | None:
        try:
            index = self.names.index(name.lower())
        except ValueError:
            return None
        return index + (1 if self.label == "month" else 0)


MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
FIELDS = (
    _Field("minute", 0, 59, 59),
    _Field("hour", 0, 23, 23),
    _Field("day-of-month", 1, 31, 31),
    _Field("month", 1, 12, 12, MONTH_NAMES),
    _Field("day-of-week", 0, 7, 6, DAY_NAMES),
)


@dataclass(frozen=True)
class Schedule:
    text: str  # as written, without surrounding whitespace
    minutes: frozenset[int]  # 0-59
    hours: frozenset[int]  # 0-23
    days: frozenset[int]  # day of month 1-31
    months: frozenset[int]  # 1-12
    weekdays: frozenset[int]  # 0-6, 0 = Sunday
    days_restricted: bool  # the day-of-month field did not start with "*"
    weekdays_restricted: bool  # the day-of-week field did not start with "*"

    def matches(self, at: datetime) -> bool:
        """Whether the schedule fires in at's minute (naive: UTC; seconds are ignored)."""
        at = _utc(at)
        return at.minute in self.minutes and at.hour in self.hours and self._day_matches(at.date())

    def next_after(self, at: datetime) -> datetime:
        """The first firing time strictly after `at` (naive: UTC), in UTC, to the minute.

        ValueError only if it would be past the year 9999.
        """
        too_late = ValueError(f"schedule {self.text!r} does not fire after {at.isoformat()} before the year 10000")
        try:
            start = _utc(at).replace(second=0, microsecond=0) + timedelta(minutes=1)
        except OverflowError:
            raise too_late from None
        try:
            limit = start + CALENDAR_CYCLE
        except OverflowError:
            limit = datetime.max.replace(tzinfo=UTC)
        minutes, hours = sorted(self.minutes), sorted(self.hours)
        day, earliest = start.date(), (start.hour, start.minute)
        # Day by day rather than minute by minute, skipping months that cannot match: even a
        # rare schedule (29 February on a Sunday) takes a few thousand steps at most.
        while day <= limit.date():
            if day.month not in self.months:
                following = _first_of_next_month(day)
                if following is None:
                    break
                day, earliest = following, (0, 0)
                continue
            if self._day_matches(day):
                found = _first_at_or_after(hours, minutes, earliest)
                if found is not None:
                    return datetime.combine(day, time(*found), UTC)
            if day == date.max:
                break
            day, earliest = day + timedelta(days=1), (0, 0)
        raise too_late

    def previous_at_or_before(self, at: datetime) -> datetime | None:
        """The latest firing time at or before `at` (naive: UTC), in UTC, within the last
        LOOKBACK_YEARS years; None if it did not fire in that time."""
        end = _utc(at)
        earliest = _years_before(end, LOOKBACK_YEARS)
        minutes, hours = sorted(self.minutes), sorted(self.hours)
        day, latest = end.date(), (end.hour, end.minute)
        while day >= earliest.date():
            if day.month not in self.months:
                day, latest = day.replace(day=1), (23, 59)  # the day before is in the month before
            elif self._day_matches(day):
                found = _last_at_or_before(hours, minutes, latest)
                if found is not None:
                    fired = datetime.combine(day, time(*found), UTC)
                    return fired if fired >= earliest else None
            if day == date.min:
                break
            day, latest = day - timedelta(days=1), (23, 59)
        return None

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_date = day.day in self.days
        by_weekday = day.isoweekday() % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return by_date or by_weekday  # Vixie cron: "the 13th, and also every Friday"
        return by_date and by_weekday


def parse_schedule(text: str) -> Schedule:
    """Read a five-field cron schedule or an @macro; CronError says what is wrong and how to fix it."""
    if len(text) > MAX_TEXT:
        raise CronError(f"schedule is {len(text)} characters long; the limit is {MAX_TEXT}")
    text = text.strip()
    _check_characters(text)
    if not text:
        raise CronError(f"schedule is empty; use five fields: {FIVE_FIELDS}")
    fields_text = _expand_macro(text) if text.startswith("@") else text
    parts = fields_text.split()
    if len(parts) != 5:
        raise CronError(_field_count_message(text, parts))
    sets = [_parse_field(part, field, text) for part, field in zip(parts, FIELDS, strict=True)]
    schedule = Schedule(
        text=text,
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=sets[4],
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )
    if not _can_fire(schedule):
        raise CronError(f"schedule {text!r} never fires: none of its months has any of its days of the month")
    return schedule


def _check_characters(text: str) -> None:
    for char in text:
        if ord(char) > 127:
            raise CronError(f"schedule {text!r} contains {char!r} (U+{ord(char):04X}), which is not ASCII; "
                            "write it with plain 0-9, a-z, *, /, ',' and -")
        if (char < " " and char != "\t") or char == "\x7f":
            raise CronError(f"schedule {text!r} contains the control character {char!r}; "
                            "write it on one line, with spaces between the fields")


def _expand_macro(text: str) -> str:
    name = text.lower()
    if name in MACROS:
        return MACROS[name]
    if name.split()[0] == "@reboot":
        raise CronError("schedule '@reboot' is not supported: a scheduled service runs at set times; "
                        "for something that starts with the app and keeps running, use a worker service "
                        "(a service without a schedule)")
    if text.split()[0].lower() in MACROS:
        raise CronError(f"schedule {text!r}: a macro like @daily stands alone, with nothing after it")
    known = ", ".join(MACROS)
    raise CronError(f"schedule {text!r} is not a known macro; use one of {known}, or five fields: {FIVE_FIELDS}")


def _field_count_message(text: str, parts: list[str]) -> str:
    # A space after a comma, dash or slash ("1, 2") cuts a field in two: say which one.
    for index, (part, after) in enumerate(pairwise(parts[:6])):
        if part[-1] in ",-/" or after[0] in ",-/":
            return (f"schedule {text!r}: the {FIELDS[index].label} field {part + ' ' + after!r} has a space "
                    "inside it; write a field without spaces, like 1,2 or 1-5")
    count = f"{len(parts)} field" if len(parts) == 1 else f"{len(parts)} fields"
    return f"schedule {text!r} has {count}; use five: {FIVE_FIELDS}"


def _parse_field(part: str, field: _Field, text: str) -> frozenset[int]:
    values: set[int] = set()
    for item in part.split(","):
        if not item:
            raise CronError(f"schedule {text!r}: {field.label} {part!r} has an empty item; "
                            "separate values with single commas, like 1,2")
        values.update(_parse_item(item, field, text))
    if field.hi != field.top:
        values = {value % (field.top + 1) for value in values}  # day-of-week 7 is Sunday, 0
    return frozenset(values)


def _parse_item(item: str, field: _Field, text: str) -> range:
    where = f"schedule {text!r}: {field.label}"
    base, slash, step_text = item.partition("/")
    step = _parse_step(step_text, item, field, where) if slash else 1
    if base == "*":
        return range(field.lo, field.top + 1, step)
    if base.startswith(("-", "+")):
        raise CronError(f"{where} {item!r} has a sign; use plain numbers from {field.allowed()}")
    if "-" not in base:
        start = _parse_value(base, item, field, where)
        # `a/n` runs from a to the field's end, as in `5/15` for minutes 5, 20, 35 and 50.
        return range(start, max(start, field.top) + 1 if slash else start + 1, step)
    first, _, last = base.partition("-")
    if not last or "-" in last:
        raise CronError(f"{where} range {base!r} is not of the form low-high, like 1-5")
    start, end = _parse_value(first, item, field, where), _parse_value(last, item, field, where)
    if field.hi != field.top and end == 0 < start:
        end = field.hi  # a week may end on Sunday: fri-sun is fri-sat plus Sunday
    if start > end:
        raise CronError(f"{where} range {base!r} is reversed; write the lower value first, like {last}-{first}")
    return range(start, end + 1, step)


def _parse_step(step_text: str, item: str, field: _Field, where: str) -> int:
    if not _NUMBER.fullmatch(step_text):
        raise CronError(f"{where} step {step_text!r} in {item!r} is not a number; write it like */5")
    step, most = int(step_text), field.top - field.lo
    if not 1 <= step <= most:
        raise CronError(f"{where} step {step_text} in {item!r} is out of range; use 1 to {most}")
    return step


def _parse_value(token: str, item: str, field: _Field, where: str) -> int:
    if _NUMBER.fullmatch(token):
        value = int(token)  # at most MAX_TEXT digits, so int() is cheap
        if not field.lo <= value <= field.hi:
            raise CronError(f"{where} {token} is out of range; use {field.allowed()}")
        return value
    if _WORD.fullmatch(token) and field.names:
        named = field.value_of_name(token)
        if named is None:
            raise CronError(f"{where} name {token!r} is unknown; use one of {', '.join(field.names)}")
        return named
    if not token:
        raise CronError(f"{where} {item!r} is missing a value; use {field.allowed()}")
    if token.startswith(("-", "+")):
        raise CronError(f"{where} {item!r} has a sign; use plain numbers from {field.allowed()}")
    raise CronError(f"{where} {token!r} is not a number; use {field.allowed()}")


def _can_fire(schedule: Schedule) -> bool:
    """Whether some day of some year matches, without searching the calendar.

    Every (month, day) that exists falls on every weekday in some year, so only the day-of-month
    field can make a schedule impossible, and only when it must match (the AND case).
    """
    if schedule.days_restricted and schedule.weekdays_restricted:
        return True  # every month has every weekday
    return any(day <= _LONGEST_MONTH[month] for month in schedule.months for day in schedule.days)


def _utc(at: datetime) -> datetime:
    if at.utcoffset() is None:
        return at.replace(tzinfo=UTC)
    return at.astimezone(UTC)


def _years_before(at: datetime, years: int) -> datetime:
    if at.year - years < 1:
        return datetime.min.replace(tzinfo=UTC)
    if at.month == 2 and at.day == 29:
        at = at.replace(day=28)  # the year it lands in may have no 29 February
    return at.replace(year=at.year - years)


def _first_of_next_month(day: date) -> date | None:
    if day.month < 12:
        return date(day.year, day.month + 1, 1)
    return date(day.year + 1, 1, 1) if day.year < date.max.year else None


def _first_at_or_after(hours: list[int], minutes: list[int], earliest: tuple[int, int]) -> tuple[int, int] | None:
    for hour in hours:
        if hour > earliest[0]:
            return hour, minutes[0]
        if hour == earliest[0]:
            for minute in minutes:
                if minute >= earliest[1]:
                    return hour, minute
    return None


def _last_at_or_before(hours: list[int], minutes: list[int], latest: tuple[int, int]) -> tuple[int, int] | None:
    for hour in reversed(hours):
        if hour < latest[0]:
            return hour, minutes[-1]
        if hour == latest[0]:
            for minute in reversed(minutes):
                if minute <= latest[1]:
                    return hour, minute
    return None
