"""Cron schedules for scheduled services: parsing, firing times, and refusals that name the field."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from runtime.cron import MAX_TEXT, CronError, Schedule, parse_schedule


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def next_after(text: str, at: datetime) -> datetime:
    return parse_schedule(text).next_after(at)


def firings(text: str, start: datetime, count: int) -> list[datetime]:
    schedule, found, at = parse_schedule(text), [], start
    for _ in range(count):
        at = schedule.next_after(at)
        found.append(at)
    return found


# --- firing times ---------------------------------------------------------------------------


def test_every_fifteen_minutes():
    assert next_after("*/15 * * * *", utc(2025, 6, 1, 10, 7)) == utc(2025, 6, 1, 10, 15)
    assert next_after("*/15 * * * *", utc(2025, 6, 1, 10, 45)) == utc(2025, 6, 1, 11, 0)
    assert next_after("*/15 * * * *", utc(2025, 12, 31, 23, 59)) == utc(2026, 1, 1, 0, 0)


def test_next_after_is_strictly_after_and_drops_seconds():
    schedule = parse_schedule("*/15 * * * *")
    assert schedule.next_after(utc(2025, 6, 1, 10, 15)) == utc(2025, 6, 1, 10, 30)
    assert schedule.next_after(datetime(2025, 6, 1, 10, 14, 59, 999999, tzinfo=UTC)) == utc(2025, 6, 1, 10, 15)
    result = schedule.next_after(datetime(2025, 6, 1, 10, 15, 30, 5, tzinfo=UTC))
    assert result == utc(2025, 6, 1, 10, 30) and result.second == 0 and result.microsecond == 0


def test_naive_times_are_utc_and_other_zones_are_converted():
    schedule = parse_schedule("0 12 * * *")
    naive = schedule.next_after(datetime(2025, 6, 1, 11, 0))
    assert naive == utc(2025, 6, 1, 12, 0) and naive.tzinfo is UTC
    paris = timezone(timedelta(hours=2))
    assert schedule.next_after(datetime(2025, 6, 1, 13, 30, tzinfo=paris)) == utc(2025, 6, 1, 12, 0)
    assert schedule.next_after(datetime(2025, 6, 1, 14, 0, tzinfo=paris)) == utc(2025, 6, 2, 12, 0)
    assert schedule.matches(datetime(2025, 6, 1, 14, 0, 42, tzinfo=paris))
    assert schedule.matches(datetime(2025, 6, 1, 12, 0, 59))
    assert not schedule.matches(datetime(2025, 6, 1, 12, 1))


def test_ranges_lists_and_steps():
    schedule = parse_schedule("10-20/5 1,3,5-7 * * *")
    assert schedule.minutes == {10, 15, 20}
    assert schedule.hours == {1, 3, 5, 6, 7}
    assert parse_schedule("5/15 * * * *").minutes == {5, 20, 35, 50}  # a/n: from a to the end
    assert parse_schedule("* 20/2 * * *").hours == {20, 22}
    assert parse_schedule("* * */10 * *").days == {1, 11, 21, 31}
    assert parse_schedule("* * * */3 *").months == {1, 4, 7, 10}
    assert parse_schedule("0-59/30,7 * * * *").minutes == {0, 7, 30}
    assert parse_schedule("07 * * * *").minutes == {7}
    everything = parse_schedule("* * * * *")
    assert (len(everything.minutes), len(everything.hours), len(everything.days)) == (60, 24, 31)
    assert everything.months == set(range(1, 13)) and everything.weekdays == set(range(7))
    assert firings("0 9-17/4 * * *", utc(2025, 6, 1, 9, 0), 4) == [
        utc(2025, 6, 1, 13, 0), utc(2025, 6, 1, 17, 0), utc(2025, 6, 2, 9, 0), utc(2025, 6, 2, 13, 0)]


def test_names_are_case_insensitive_and_work_in_ranges():
    assert parse_schedule("0 0 * JAN,mar-May *").months == {1, 3, 4, 5}
    assert parse_schedule("0 0 * * mon-fri").weekdays == {1, 2, 3, 4, 5}
    assert parse_schedule("0 0 * * Sun,SAT").weekdays == {0, 6}
    assert parse_schedule("0 0 * feb/4 *").months == {2, 6, 10}
    # 2025-06-06 is a Friday: mon-fri skips the weekend
    assert firings("30 8 * * mon-fri", utc(2025, 6, 6, 9, 0), 2) == [utc(2025, 6, 9, 8, 30), utc(2025, 6, 10, 8, 30)]


def test_seven_is_sunday_and_a_week_may_end_on_sunday():
    assert parse_schedule("0 0 * * 7").weekdays == {0}
    assert parse_schedule("0 0 * * 0,7").weekdays == {0}
    assert parse_schedule("0 0 * * 5-7").weekdays == {5, 6, 0}
    assert parse_schedule("0 0 * * fri-sun").weekdays == {5, 6, 0}
    assert parse_schedule("0 0 * * */2").weekdays == {0, 2, 4, 6}  # * is 0-6: Sunday counted once
    assert next_after("0 0 * * 7", utc(2025, 6, 2)) == utc(2025, 6, 8)  # 2025-06-08 is a Sunday


def test_both_day_fields_restricted_means_either():
    schedule = parse_schedule("0 0 13 * fri")
    assert schedule.days_restricted and schedule.weekdays_restricted
    assert schedule.matches(utc(2025, 6, 13))  # a Friday the 13th
    assert schedule.matches(utc(2025, 7, 13))  # a Sunday, but the 13th
    assert schedule.matches(utc(2025, 7, 4))  # a Friday, not the 13th
    assert not schedule.matches(utc(2025, 7, 5))
    assert firings("0 0 13 * fri", utc(2025, 7, 1), 4) == [utc(2025, 7, 4), utc(2025, 7, 11), utc(2025, 7, 13),
                                                           utc(2025, 7, 18)]


def test_one_day_field_unrestricted_means_both():
    only_dates = parse_schedule("0 0 13 * *")
    assert only_dates.days_restricted and not only_dates.weekdays_restricted
    assert only_dates.matches(utc(2025, 7, 13)) and not only_dates.matches(utc(2025, 7, 4))
    only_fridays = parse_schedule("0 0 * * fri")
    assert only_fridays.matches(utc(2025, 7, 4)) and not only_fridays.matches(utc(2025, 7, 13))
    # a field starting with * is unrestricted even with a step, as in Vixie cron: odd days AND Fridays
    stepped = parse_schedule("0 0 */2 * fri")
    assert not stepped.days_restricted
    assert stepped.matches(utc(2025, 7, 11)) and not stepped.matches(utc(2025, 7, 4))
    assert not stepped.matches(utc(2025, 7, 13))
    assert next_after("0 0 13 * 5", utc(2025, 1, 1)) != next_after("0 0 13 * *", utc(2025, 1, 1))
    assert next_after("0 0 13 * *", utc(2025, 1, 1)) == utc(2025, 1, 13)


def test_rare_schedules_are_found_quickly():
    started = time.perf_counter()
    assert next_after("0 0 29 2 *", utc(2025, 3, 1)) == utc(2028, 2, 29)
    assert next_after("0 0 29 2 *", utc(2028, 2, 29)) == utc(2032, 2, 29)
    assert next_after("0 0 29 2 *", utc(2096, 3, 1)) == utc(2104, 2, 29)  # 2100 is not a leap year
    # 29 February on a weekend (dow starts with *, so both must match): seven years away
    assert next_after("0 0 29 2 */6", utc(2025, 3, 1)) == utc(2032, 2, 29)
    assert next_after("0 0 13 * *", utc(2025, 6, 14)) == utc(2025, 7, 13)
    assert next_after("59 23 31 12 *", utc(2025, 1, 1)) == utc(2025, 12, 31, 23, 59)
    assert time.perf_counter() - started < 0.5


def test_previous_at_or_before():
    schedule = parse_schedule("*/15 * * * *")
    assert schedule.previous_at_or_before(utc(2025, 6, 1, 10, 7)) == utc(2025, 6, 1, 10, 0)
    assert schedule.previous_at_or_before(utc(2025, 6, 1, 10, 15)) == utc(2025, 6, 1, 10, 15)
    assert schedule.previous_at_or_before(datetime(2025, 6, 1, 10, 15, 42)) == utc(2025, 6, 1, 10, 15)
    assert schedule.previous_at_or_before(utc(2025, 1, 1, 0, 14)) == utc(2025, 1, 1, 0, 0)
    assert schedule.previous_at_or_before(utc(2025, 1, 1, 0, 0)) == utc(2025, 1, 1, 0, 0)
    assert parse_schedule("30 23 31 12 *").previous_at_or_before(utc(2025, 1, 1, 0, 0)) == utc(2024, 12, 31, 23, 30)
    assert parse_schedule("0 0 29 2 *").previous_at_or_before(utc(2027, 6, 1)) == utc(2024, 2, 29)
    # 2096 to 2104 is eight years: longer than the five it looks back
    assert parse_schedule("0 0 29 2 *").previous_at_or_before(utc(2104, 2, 28)) is None
    assert parse_schedule("0 0 1 1 *").previous_at_or_before(utc(2025, 1, 1)) == utc(2025, 1, 1)


def test_macros():
    cases = {
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
    }
    for macro, fields in cases.items():
        schedule, expanded = parse_schedule(macro), parse_schedule(fields)
        assert schedule.text == macro
        assert schedule == Schedule(macro, *(getattr(expanded, name) for name in (
            "minutes", "hours", "days", "months", "weekdays", "days_restricted", "weekdays_restricted")))
    assert parse_schedule("  @Daily\t").text == "@Daily"
    assert next_after("@weekly", utc(2025, 6, 2)) == utc(2025, 6, 8)
    assert next_after("@hourly", utc(2025, 6, 2, 10, 0)) == utc(2025, 6, 2, 11, 0)


def test_whitespace_around_and_between_fields():
    schedule = parse_schedule("\t 0\t12  *  * *\n")
    assert schedule.text == "0\t12  *  * *" and schedule.hours == {12}


# --- refusals -------------------------------------------------------------------------------


def refusal(text: str) -> str:
    with pytest.raises(CronError) as caught:
        parse_schedule(text)
    return str(caught.value)


def test_wrong_field_count():
    assert refusal("* * *") == ("schedule '* * *' has 3 fields; use five: minute hour day-of-month month "
                                "day-of-week, like '*/15 * * * *'")
    assert "has 6 fields" in refusal("0 0 * * * *")
    assert "empty" in refusal("   ")
    assert "has 1 field;" in refusal("fri")


@pytest.mark.parametrize(
    "text, field, part",
    [
        ("60 * * * *", "minute", "60 is out of range; use 0 to 59"),
        ("* 24 * * *", "hour", "24 is out of range; use 0 to 23"),
        ("* * 0 * *", "day-of-month", "0 is out of range; use 1 to 31"),
        ("* * 32 * *", "day-of-month", "32 is out of range"),
        ("* * * 13 *", "month", "13 is out of range; use 1 to 12 or jan to dec"),
        ("* * * * 8", "day-of-week", "8 is out of range; use 0 to 7 (0 and 7 are Sunday) or sun to sat"),
        ("99999999999999999999 * * * *", "minute", "99999999999999999999 is out of range"),
        ("0-99999999999999999999 * * * *", "minute", "99999999999999999999 is out of range"),
        ("5-1 * * * *", "minute", "range '5-1' is reversed; write the lower value first, like 1-5"),
        ("* * * dec-jan *", "month", "range 'dec-jan' is reversed"),
        ("* * * * sat-mon", "day-of-week", "range 'sat-mon' is reversed"),
        ("*/0 * * * *", "minute", "step 0 in '*/0' is out of range; use 1 to 59"),
        ("* */24 * * *", "hour", "step 24 in '*/24' is out of range; use 1 to 23"),
        ("*/99999999999999999999 * * * *", "minute", "out of range"),
        ("*/x * * * *", "minute", "step 'x' in '*/x' is not a number"),
        ("*/ * * * *", "minute", "step '' in '*/' is not a number"),
        ("*/-5 * * * *", "minute", "step '-5' in '*/-5' is not a number"),
        ("*/2/3 * * * *", "minute", "step '2/3'"),
        ("1,,2 * * * *", "minute", "'1,,2' has an empty item"),
        ("* * * * 1,", "day-of-week", "'1,' has an empty item"),
        (",1 * * * *", "minute", "',1' has an empty item"),
        ("* * * foo *", "month", "name 'foo' is unknown; use one of jan, feb"),
        ("* * * january *", "month", "name 'january' is unknown"),
        ("* * * * monday", "day-of-week", "name 'monday' is unknown; use one of sun, mon, tue, wed, thu, fri, sat"),
        ("* * * * mon-xyz", "day-of-week", "name 'xyz' is unknown"),
        ("jan * * * *", "minute", "'jan' is not a number; use 0 to 59"),
        ("* * mon * *", "day-of-month", "'mon' is not a number"),
        ("-5 * * * *", "minute", "'-5' has a sign"),
        ("+5 * * * *", "minute", "'+5' has a sign"),
        ("* 1--5 * * *", "hour", "range '1--5' is not of the form low-high"),
        ("* 1- * * *", "hour", "range '1-' is not of the form low-high"),
        ("* 1-2-3 * * *", "hour", "range '1-2-3' is not of the form low-high"),
        ("/5 * * * *", "minute", "'/5' is missing a value"),
        ("*5 * * * *", "minute", "'*5' is not a number"),
        ("** * * * *", "minute", "'**' is not a number"),
        ("*-5 * * * *", "minute", "'*' is not a number"),
        ("? * * * *", "minute", "'?' is not a number"),
        ("* * L * *", "day-of-month", "'L' is not a number"),
        ("* * * * 5#3", "day-of-week", "'5#3' is not a number"),
        ("* * * * 1.5", "day-of-week", "'1.5' is not a number"),
        ("@ * * * *", "minute", ""),  # an @ that is not a macro
        ("1, 2 * * * *", "minute", "field '1, 2' has a space inside it"),
        ("* 1 -5 * * *", "hour", "field '1 -5' has a space inside it"),
        ("* * * * 1 ,2", "day-of-week", "field '1 ,2' has a space inside it"),
    ],
)
def test_refusals_name_the_field(text: str, field: str, part: str):
    message = refusal(text)
    if text.startswith("@"):
        assert "not a known macro" in message
        return
    assert message.startswith(f"schedule {text!r}: ")
    assert f"{field} " in message and part in message


def test_schedules_that_never_fire():
    assert refusal("0 0 30 2 *").startswith("schedule '0 0 30 2 *' never fires")
    assert refusal("0 0 31 4 *").startswith("schedule '0 0 31 4 *' never fires")
    assert "never fires" in refusal("0 0 30,31 2 *")
    assert "never fires" in refusal("0 0 31 apr,jun,sep,nov */2")
    # either day field may match when both are restricted: every Monday in February
    assert next_after("0 0 30 2 mon", utc(2025, 1, 1)) == utc(2025, 2, 3)
    assert next_after("0 0 29 2 *", utc(2025, 1, 1)) == utc(2028, 2, 29)
    assert next_after("0 0 31 1-4 *", utc(2025, 2, 1)) == utc(2025, 3, 31)


def test_macro_refusals():
    message = refusal("@reboot")
    assert "@reboot" in message and "not supported" in message and "worker service" in message
    message = refusal("@often")
    assert "'@often' is not a known macro" in message
    for known in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"):
        assert known in message
    assert "stands alone" in refusal("@daily 5")
    assert "not a known macro" in refusal("@")


def test_hostile_text():
    assert refusal("* " * 150) == f"schedule is 300 characters long; the limit is {MAX_TEXT}"
    assert "the limit is 200" in refusal("*" * 10_000_000)
    message = refusal("0 0 * * mon\u2013fri")  # an en dash pasted from a web page
    assert "'\u2013' (U+2013), which is not ASCII" in message
    assert "U+00A0" in refusal("0\u00a00 * * * *")
    assert "U+0661" in refusal("\u0661 * * * *")  # Arabic-Indic digit one: isdigit() but not 0-9
    assert "control character '\\n'" in refusal("0 0\n* * *")
    assert "control character '\\x00'" in refusal("0 0 * * *\x00")
    assert "control character" in refusal("0 0 * * \x7f")


# --- fuzz -----------------------------------------------------------------------------------

ALPHABET = "0123456789" * 3 + "*/,-" * 4 + " " * 8 + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ@"
# per field: mostly good values, some out of range or impossible together (31 with feb)
PIECES = [
    ["*", "*/5", "*/7", "0", "15", "59", "5/20", "3-10/2", "1,2", "60"],
    ["*", "*/3", "0", "7", "23", "9-17", "20/2", "24"],
    ["*", "*/10", "1", "13", "29", "30", "31", "1-5", "32"],
    ["*", "*/4", "1", "2", "feb", "nov-dec", "apr,jun", "13"],
    ["*", "*/2", "0", "7", "mon", "fri", "sun-sat", "mon-fri", "8"],
]
START = utc(2025, 6, 15, 13, 37)


def check_times(schedule: Schedule, at: datetime, every_minute: bool) -> None:
    fired = schedule.next_after(at)
    assert fired > at and fired.tzinfo is UTC and fired.second == fired.microsecond == 0
    assert schedule.matches(fired)
    assert schedule.previous_at_or_before(fired) == fired
    before = schedule.previous_at_or_before(at)
    assert before is None or (before <= at and schedule.matches(before))
    if before is not None:
        assert schedule.next_after(before) >= fired
    if every_minute:
        minute = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
        while minute < fired:
            assert not schedule.matches(minute), (schedule.text, minute)
            minute += timedelta(minutes=1)


def test_fuzz_random_text_parses_or_says_why():
    rng = random.Random(0)
    parsed: list[Schedule] = []
    word_alphabet = ALPHABET.replace(" ", "")
    for number in range(2000):
        if number % 2:  # five words, so that most get past the field count to the field parsers
            text = " ".join("".join(rng.choice(word_alphabet) for _ in range(rng.randint(1, 4))) for _ in range(5))
        else:
            text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24)))
        try:
            parsed.append(parse_schedule(text))
        except CronError as err:
            assert str(err)
    for _ in range(600):  # cron-shaped text, so that plenty of it parses
        fields = [",".join(rng.choice(pieces) for _ in range(rng.choice((1, 1, 1, 2)))) for pieces in PIECES]
        text = " ".join(fields) if rng.random() < 0.9 else "@" + rng.choice(["daily", "weekly", "x", "reboot"])
        try:
            parsed.append(parse_schedule(text))
        except CronError as err:
            assert str(err)
    assert len(parsed) > 200
    checked_minutes = 0
    for schedule in parsed:
        at = START + timedelta(minutes=rng.randint(0, 60 * 24 * 400), seconds=rng.randint(0, 59))
        frequent = checked_minutes < 20_000 and schedule.next_after(at) - at <= timedelta(days=2)
        check_times(schedule, at, every_minute=frequent)
        if frequent:
            checked_minutes += (schedule.next_after(at) - at) // timedelta(minutes=1)


@pytest.mark.parametrize("text", ["*/15 * * * *", "0 */3 * * *", "5-10 9,17 * * mon-fri", "*/7 * * * *",
                                  "0 0 * * *", "59 23 * * *"])
def test_next_after_agrees_with_matches_minute_by_minute(text: str):
    schedule = parse_schedule(text)
    start, end = utc(2025, 6, 13, 20, 0), utc(2025, 6, 17, 0, 0)  # a Friday evening to a Tuesday
    by_minute = [start + timedelta(minutes=n) for n in range(1, (end - start) // timedelta(minutes=1))
                 if schedule.matches(start + timedelta(minutes=n))]
    chained, at = [], start
    while (at := schedule.next_after(at)) < end:
        chained.append(at)
    assert chained == by_minute and chained
    backwards, at = [], end - timedelta(seconds=1)
    while (found := schedule.previous_at_or_before(at)) is not None and found > start:
        backwards.append(found)
        at = found - timedelta(seconds=1)
    assert backwards[::-1] == by_minute
