"""Every env value is masked in deployment output, short ones too (hooks/output.py)."""

from __future__ import annotations

from pathlib import Path

from hooks.output import MASK, DeployOutput, masker


def test_short_values_are_masked_in_the_log_and_for_listeners(tmp_path: Path):
    seen: list[str] = []
    out = DeployOutput(tmp_path / "1.log", ["s3cretvalue", "42", "ab", "x"])
    out.subscribe(seen.append)
    out.line("PIN=42 mode=ab flag x")
    out.line("token s3cretvalue")
    out.close()
    log = (tmp_path / "1.log").read_text()
    assert log.splitlines() == [f"PIN={MASK} mode={MASK} flag {MASK}", f"token {MASK}"]
    assert seen == log.splitlines()
    for value in ("42", "ab", " x", "s3cret"):
        assert value not in log


def test_short_values_do_not_turn_ordinary_words_into_asterisks():
    mask = masker(["42", "on", "a", "   ", ""])
    assert mask("step 1420 of abandon: running on port 4200, a1") == f"step 1420 of abandon: running {MASK} port 4200, a1"
    assert mask("a") == MASK and mask("(42)") == f"({MASK})" and mask("42,43") == f"{MASK},43"
    assert mask("   indented") == "   indented"  # blank values are layout, not secrets


def test_long_values_are_masked_anywhere_longest_first():
    mask = masker(["abcd", "abcdefgh"])
    assert mask("xxabcdefghyy and abcdz") == f"xx{MASK}yy and {MASK}z"
    assert masker([])("unchanged") == "unchanged"


def test_a_value_of_several_lines_is_masked_line_by_line():
    mask = masker(["-----BEGIN KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n-----END KEY-----"])
    assert mask("c2VjcmV0IGtleSBtYXRlcmlhbA==") == "*****"
    assert mask("printing -----BEGIN KEY----- now") == "printing ***** now"
