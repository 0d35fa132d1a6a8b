"""Dashboard sessions as data: made from a live key or a one-time link, stored as a hash,
sliding, ended every way a person expects; sign-in rate limits; the API's cookie and CSRF rule."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from api.app import build_app
from api.endpoints import ENDPOINTS
from conftest import api_platform
from hooks import apikeys, sessions
from hooks.errors import Refused
from runtime.settings import Settings


@pytest.fixture
def platform(tmp_path: Path):
    return api_platform(Settings(data_dir=tmp_path / "data"), {"alice": "admin", "dave": "deployer"})


def key_of(platform, user: str = "alice") -> tuple[int, str]:
    key, secret = apikeys.create(platform.store, "test", user, "laptop")
    return key.id, secret


def test_a_key_makes_a_session_whose_token_is_stored_only_as_a_hash(platform):
    _, secret = key_of(platform)
    who = sessions.sign_in_with_key(platform.store, secret, "10.0.0.1", "Firefox")
    assert who.user.name == "alice" and who.token.startswith(sessions.TOKEN_PREFIX)
    rows = platform.store._rows("SELECT * FROM sessions")
    assert who.token not in str(rows) and sessions.digest(who.token) in str(rows)
    assert sessions.verify(platform.store, who.token).session.id == who.session.id
    assert sessions.verify(platform.store, who.token + "x") is None
    assert sessions.verify(platform.store, "not-a-session") is None
    with pytest.raises(Refused, match="not a live API key"):
        sessions.sign_in_with_key(platform.store, "disco_wrong", "10.0.0.1", "")


def test_a_session_ends_with_sign_out_with_its_key_and_with_its_user(platform):
    key_id, secret = key_of(platform, "dave")
    alice = platform.store.get_user("alice")
    dave = platform.store.get_user("dave")
    first = sessions.sign_in_with_key(platform.store, secret, "a", "")
    second = sessions.sign_in_with_key(platform.store, secret, "b", "")
    sessions.end(platform.store, dave, first.session.id)
    assert sessions.verify(platform.store, first.token) is None
    assert sessions.verify(platform.store, second.token) is not None
    with pytest.raises(Refused, match="already ended"):
        sessions.end(platform.store, dave, first.session.id)
    assert [s.id for s in sessions.live_sessions(platform.store, "dave")] == [second.session.id]
    # Someone else's session is not even confirmed to a deployer; an admin may end it.
    other = sessions.sign_in_with_key(platform.store, key_of(platform, "alice")[1], "c", "")
    with pytest.raises(Refused, match=f"no session {other.session.id}"):
        sessions.end(platform.store, dave, other.session.id)
    apikeys.revoke(platform.store, alice, key_id)
    assert sessions.verify(platform.store, second.token) is None
    assert sessions.live_sessions(platform.store, "dave") == []
    audit = [e["action"] for e in platform.store.audit_log(50)]
    assert "sessions:start" in audit and "sessions:end" in audit


def test_removing_a_user_removes_their_sessions(platform):
    _, secret = key_of(platform, "dave")
    who = sessions.sign_in_with_key(platform.store, secret, "a", "")
    platform.store.remove_user("dave")
    assert sessions.verify(platform.store, who.token) is None


def test_expiry_slides_with_use_and_an_expired_session_is_refused(platform):
    _, secret = key_of(platform)
    who = sessions.sign_in_with_key(platform.store, secret, "a", "")
    old = (datetime.now(UTC) - timedelta(minutes=5)).isoformat(timespec="seconds")
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")
    platform.store.touch_session(who.session.id, old, soon)
    assert sessions.verify(platform.store, who.token) is not None
    moved = platform.store.get_session(who.session.id)
    assert datetime.fromisoformat(moved.expires_at) > datetime.now(UTC) + timedelta(days=6)  # used: 7 days again
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="seconds")
    platform.store.touch_session(who.session.id, old, past)
    assert sessions.verify(platform.store, who.token) is None
    sessions.forget_old(platform.store)  # expired a second ago: kept a day for the team page
    assert platform.store.get_session(who.session.id) is not None
    platform.store.forget_old_sessions((datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="seconds"))
    assert platform.store.get_session(who.session.id) is None


def test_a_link_signs_in_once_within_five_minutes_and_dies_with_its_key(platform):
    key_id, secret = key_of(platform)
    key, user = apikeys.verify(platform.store, secret)
    token = sessions.make_link(platform.store, user, key)
    who = sessions.sign_in_with_link(platform.store, token, "a", "")
    assert who.user.name == "alice" and who.key.id == key_id
    with pytest.raises(Refused, match="used, expired or wrong"):
        sessions.sign_in_with_link(platform.store, token, "a", "")
    stale = sessions.make_link(platform.store, user, key)
    platform.store._write("UPDATE sign_in_links SET expires_at = ? WHERE digest = ?",
                          [(datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="seconds"),
                           sessions.digest(stale)])
    with pytest.raises(Refused, match="used, expired or wrong"):
        sessions.sign_in_with_link(platform.store, stale, "a", "")
    orphan = sessions.make_link(platform.store, user, key)
    apikeys.revoke(platform.store, user, key_id)
    with pytest.raises(Refused, match="revoked or expired"):
        sessions.sign_in_with_link(platform.store, orphan, "a", "")


def test_csrf_tokens_differ_per_session_and_are_checked_in_constant_time(platform):
    _, secret = key_of(platform)
    one = sessions.sign_in_with_key(platform.store, secret, "a", "")
    two = sessions.sign_in_with_key(platform.store, secret, "a", "")
    assert one.csrf != two.csrf and len(one.csrf) == 64
    assert sessions.csrf_matches(one.token, one.csrf)
    assert not sessions.csrf_matches(one.token, two.csrf) and not sessions.csrf_matches(one.token, "")


def test_the_limiter_counts_failures_per_address_and_sign_ins_per_user(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: clock[0])
    limiter = sessions.SignInLimiter(failures_per_address=3, per_user=2, window=60)
    for _ in range(3):
        limiter.check("address", "10.0.0.1")
        limiter.count("address", "10.0.0.1")
    with pytest.raises(Refused, match="try again in 60 s") as refused:
        limiter.check("address", "10.0.0.1")
    assert refused.value.kind.http_status == 429
    limiter.check("address", "10.0.0.2")  # another address is not held back
    clock[0] += 61
    limiter.check("address", "10.0.0.1")  # the window slid past the failures
    limiter.count("user", "alice")
    limiter.count("user", "alice")
    with pytest.raises(Refused, match="this user"):
        limiter.check("user", "alice")


def test_the_api_takes_a_session_cookie_and_wants_the_csrf_token_for_changes(platform):
    _, secret = key_of(platform)
    who = sessions.sign_in_with_key(platform.store, secret, "a", "")
    client = TestClient(build_app(platform, ENDPOINTS.endpoints))
    client.cookies.set("disco_session", who.token)
    assert client.get("/api/v1/projects").status_code == 200
    refused = client.post("/api/v1/projects", json={"name": "made"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
    assert platform.store.get_project("made") is None
    made = client.post("/api/v1/projects", json={"name": "made"}, headers={"X-CSRF-Token": who.csrf})
    assert made.status_code == 201
    listed = client.get("/api/v1/sessions").json()
    assert [s["current"] for s in listed] == [True] and who.token not in str(listed)
    assert client.delete(f"/api/v1/sessions/{who.session.id}", headers={"X-CSRF-Token": who.csrf}).status_code == 200
    assert client.get("/api/v1/projects").json()["error"]["message"].startswith("your dashboard session has ended")


def test_sign_in_form_needs_its_double_submit_token_and_sets_a_strict_http_only_cookie(platform):
    _, secret = key_of(platform)
    client = TestClient(build_app(platform, ENDPOINTS.endpoints))
    form = client.get("/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    forged = TestClient(build_app(platform, ENDPOINTS.endpoints))  # another site's form: no cookie
    refused = forged.post("/sign-in", data={"csrf": token, "key": secret}, follow_redirects=False)
    assert refused.status_code == 403 and "disco_session" not in refused.headers.get("set-cookie", "")
    signed = client.post("/sign-in?next=//evil.example/x", data={"csrf": token, "key": secret}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/"  # never off this server
    cookie = signed.headers["set-cookie"]
    assert "disco_session=dses_" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert secret not in cookie


def test_a_burst_of_bad_keys_from_one_address_is_held_back_and_pages_never_500(platform):
    """The failures count before the key is looked up, so a burst cannot slip past the limit;
    odd input to pages is a page saying so (HEAD, a number past SQLite's INTEGER)."""
    _, secret = key_of(platform)
    app = build_app(platform, ENDPOINTS.endpoints)
    client = TestClient(app)
    statuses = []
    for _ in range(12):
        form = client.get("/sign-in")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        statuses.append(client.post("/sign-in", data={"csrf": token, "key": "disco_guess"}).status_code)
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    assert client.head("/sign-in").status_code == 200
    who = sessions.sign_in_with_key(platform.store, secret, "b", "")
    signed = TestClient(app)
    signed.cookies.set("disco_session", who.token)
    assert signed.get("/projects/none/deployments/99999999999999999999").status_code == 404
    assert signed.head("/api/v1/projects").status_code == 200
    page = signed.get("/team")
    assert "disco_session=" in page.headers["set-cookie"] and "Max-Age=604800" in page.headers["set-cookie"]
    assert signed.get("/api/v1/projects").headers["cache-control"] == "no-store"


def test_the_events_stream_ends_when_its_key_is_revoked(platform):
    import asyncio

    from api.context import Caller
    from api.endpoints import _project_events

    key_id, secret = key_of(platform)
    key, user = apikeys.verify(platform.store, secret)
    platform.store.add_project("shop", "alice")

    async def follow() -> list[str]:
        seen = []
        stream = _project_events(platform.store, Caller(user, key))
        seen.append(await anext(stream))
        apikeys.revoke(platform.store, user, key_id)
        platform.store.add_project("later", "alice")
        async for event in stream:
            seen.append(event)
        return seen

    seen = asyncio.run(asyncio.wait_for(follow(), 10))
    assert '"project": "shop"' in seen[0]
    assert seen[-1].startswith("event: end") and not any('"later"' in e for e in seen)
