"""Fuzzed outside input (issue 16): every parser of what users, git clients and GitHub send gets
random input, and answers with its result or the project's own error with a message; never
another exception, a hang or a 500.

Covered: disco.toml (with the Procfile merge and the server's caps), Procfiles, cron schedules,
project names, ref names, SSH commands, public keys, Dockerfiles, API bodies, paths
and query strings, webhook bodies and headers (project and App), and receive-pack streams.

The suite runs the "fuzz" profile (a few dozen examples per property, well under a minute);
`bench/fuzz.py --examples N` runs the same properties with N each ("fuzz-long").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import struct
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import asyncssh
import pytest
import tomlkit
from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.objects import Blob, Commit, Tree
from dulwich.pack import write_pack_objects
from dulwich.repo import Repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from api.app import build_app
from api.endpoints import ENDPOINTS
from api.spec import OBJECT
from conftest import api_platform
from gitserver.gitproto import BadClient, PushContext, PushLimits, run_receive_pack
from gitserver.server import GIT_SERVICES, parse_git_command
from hooks import apikeys, github
from hooks.pipeline import ref_name_problem
from hooks.platform import Platform
from hooks.policy import PROJECT_NAME, PolicyError, project_from_path
from runtime import gitrepo
from runtime.appconfig import (
    BUILD_KEYS,
    RELEASE_KEYS,
    SERVICE_KEYS,
    SERVICE_NAME,
    AppConfig,
    AppConfigError,
    check_caps,
    parse_app_config,
    with_procfile,
)
from runtime.cron import CronError, Schedule, parse_schedule
from runtime.dockerfile import DockerfileError, ImageOwner, image_references, prepare, private_cache_mounts
from runtime.procfile import Procfile, ProcfileError, parse_procfile
from runtime.settings import Settings
from runtime.sshkeys import KeyFormatError, PublicKey, parse_public_key

T = TypeVar("T")

settings.register_profile("fuzz", max_examples=100, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz-long", settings.get_profile("fuzz"),
                          max_examples=int(os.environ.get("DISCO_FUZZ_EXAMPLES", "2000")))
# Applied per property, never loaded: the other modules' hypothesis tests keep their own settings.
FUZZ = settings.get_profile(os.environ.get("DISCO_FUZZ_PROFILE", "fuzz"))
HANG_SECONDS = 10.0  # far beyond what any one input takes; past it the parser is looping


def bounded(call: Callable[[], T], seconds: float = HANG_SECONDS) -> T:
    """call() in a thread of its own: one still busy after `seconds` fails as a hang instead of
    holding up the suite (the thread is a daemon and is left behind)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as err:  # noqa: BLE001 (handed to the test, which decides)
            outcome.append((False, err))

    thread = threading.Thread(target=run, name="fuzzed-parser", daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds:g} s: a hang"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def result_or_refusal(call: Callable[[], T], returns: type | tuple[type, ...],
                      refuses: type[BaseException] | tuple[type[BaseException], ...]) -> T | None:
    """What call() returns, of type `returns`, or None when it raised `refuses` with a message;
    anything else (another exception, another type, a hang) fails the property."""
    try:
        value = bounded(call)
    except refuses as err:
        assert str(err).strip(), f"{type(err).__name__} raised without a message"
        return None
    assert isinstance(value, returns), f"returned {type(value).__name__}, not {returns}"
    return value


# -- shared strategies ---------------------------------------------------------------------------

# Text as it arrives from outside: any code point, lone surrogates (JSON's "\ud800") included.
SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc80b"])
any_text = st.one_of(st.text(max_size=60), SURROGATES)
big_ints = st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 10**30, -1, 0])
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), big_ints, st.floats(allow_nan=False), any_text)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text, inner, max_size=4), max_leaves=12)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


# -- disco.toml and the Procfile -----------------------------------------------------------------

EXAMPLE_LINES = (Path(__file__).parent.parent / "disco.toml.example").read_text().splitlines()
toml_scalars = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(), st.booleans(),
                         st.text(max_size=30), st.sampled_from(["/healthz", "data:/data", "*/5 * * * *", "256M",
                                                                 "Dockerfile", "../x", "python app.py", "'"]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
service_names = st.one_of(st.sampled_from(["web", "worker", "report", "Web", "-x", "a" * 31]),
                          st.text(max_size=12))


def tables(keys: dict[str, type]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.one_of(st.sampled_from(sorted(keys)), st.text(max_size=8)), toml_values, max_size=5)


toml_documents = st.fixed_dictionaries({}, optional={
    "build": tables(BUILD_KEYS),
    "services": st.dictionaries(service_names, tables(SERVICE_KEYS), max_size=3),
    "release": tables(RELEASE_KEYS),
    "extra": toml_values,
})


# Lines of the example with lines of random text mixed in: broken TOML of a familiar shape.
mangled_toml = st.lists(st.one_of(st.sampled_from(EXAMPLE_LINES), st.text(max_size=40)), max_size=30).map("\n".join)
disco_tomls = st.one_of(toml_documents.map(tomlkit.dumps), mangled_toml, st.text(max_size=200))
procfile_lines = st.one_of(
    st.builds("{}: {}".format, st.one_of(st.sampled_from(["web", "worker", "release", "Web_1", "web"]),
                                         st.text(max_size=10)), st.text(max_size=30)),
    st.sampled_from(["", "# comment", "\ufeffweb: x", "web:", "release: ./migrate", "web: a\x00b"]),
    st.text(max_size=30),
)
procfiles = st.one_of(st.lists(procfile_lines, max_size=8).map("\n".join), st.text(max_size=100))


def check_config(config: AppConfig) -> None:
    assert config.services, "a config without services"
    for name, service in config.services.items():
        assert SERVICE_NAME.fullmatch(name) and service.name == name
        if service.schedule is not None:
            parse_schedule(service.schedule)


@FUZZ
@given(disco_tomls, st.none() | procfiles)
def test_disco_toml_and_procfile_give_a_config_or_an_app_config_error(text: str, procfile: str | None) -> None:
    config = result_or_refusal(lambda: parse_app_config(text), AppConfig, AppConfigError)
    if config is None:
        return
    check_config(config)
    result_or_refusal(lambda: check_caps(config, Settings(data_dir=Path("/nonexistent")).caps), type(None),
                      AppConfigError)
    if procfile is not None:
        merged = result_or_refusal(lambda: with_procfile(config, procfile), AppConfig, AppConfigError)
        if merged is not None:
            check_config(merged)


@FUZZ
@given(procfiles)
def test_procfiles_give_process_types_or_a_procfile_error_naming_the_problem(text: str) -> None:
    procfile = result_or_refusal(lambda: parse_procfile(text), Procfile, ProcfileError)
    if procfile is not None:
        names = [p.name for p in procfile.processes]
        assert len(names) == len(set(names)) and "release" not in names
        assert all(p.command and p.line >= 1 for p in procfile.processes)


# -- cron schedules ------------------------------------------------------------------------------

cron_fields = st.one_of(
    st.text(alphabet="0123456789*/,-", min_size=1, max_size=8),
    st.sampled_from(["*", "*/15", "mon-fri", "jan", "sun", "7", "0", "31", "30", "29", "2", "L", "?", "fri-sun",
                     "5/15", "-1", "+1", "1,", "99999999999999999999"]),
    st.text(max_size=5),
)
schedules = st.one_of(
    st.lists(cron_fields, min_size=1, max_size=7).map(" ".join),
    st.sampled_from(["@daily", "@hourly", "@reboot", "@daily x", "@nope", "@"]),
    st.text(max_size=40),
)
instants = st.one_of(st.datetimes(), st.datetimes(timezones=st.just(UTC)),
                     st.sampled_from([datetime.min, datetime.max, datetime(9999, 12, 31, 23, 59),
                                      datetime(1, 1, 1, tzinfo=UTC)]))


@FUZZ
@given(schedules, instants)
def test_schedules_parse_or_say_why_and_their_times_are_in_order(text: str, at: datetime) -> None:
    schedule = result_or_refusal(lambda: parse_schedule(text), Schedule, CronError)
    if schedule is None:
        return
    after = result_or_refusal(lambda: schedule.next_after(at), datetime, ValueError)
    before = result_or_refusal(lambda: schedule.previous_at_or_before(at), (datetime, type(None)), ())
    moment = at if at.tzinfo else at.replace(tzinfo=UTC)
    if after is not None:
        assert after > moment and schedule.matches(after)
    if before is not None:
        assert before <= moment and schedule.matches(before)


# -- names: projects, refs and branches, SSH commands ---------------------------------------------

ref_alphabet = st.sampled_from(list("abz09-_./@{}~^:?*[\\ \x00\x7f\t") + ["lock", ".lock", "HEAD", "é", "\udc80"])
ref_names = st.one_of(
    st.builds("{}{}".format, st.sampled_from(["refs/heads/", "refs/tags/", "refs/", "", "refs/heads//"]),
              st.lists(ref_alphabet, max_size=12).map("".join)),
    st.text(max_size=30),
)


@FUZZ
@given(st.one_of(st.text(max_size=80), st.from_regex(PROJECT_NAME, fullmatch=True).map(lambda n: f"/{n}.git")))
def test_project_paths_give_a_valid_name_or_a_policy_error(path: str) -> None:
    name = result_or_refusal(lambda: project_from_path(path), str, PolicyError)
    if name is not None:
        assert PROJECT_NAME.fullmatch(name)


@FUZZ
@given(ref_names)
def test_ref_names_that_pass_are_ones_git_accepts(ref: str) -> None:
    problem = result_or_refusal(lambda: ref_name_problem(ref), (str, type(None)), ())
    if problem is not None:
        assert problem.strip()
        return
    # git's own rules are the oracle: a name the pipeline lets through, git must accept too.
    checked = subprocess.run(["git", "check-ref-format", ref.encode("utf-8", "surrogateescape")],
                             capture_output=True)
    assert checked.returncode == 0, f"git refuses {ref!r}"


ssh_commands = st.one_of(
    st.builds("{} {}".format, st.sampled_from(sorted(GIT_SERVICES) + ["git receive-pack", "git", "sh -c", "scp"]),
              st.one_of(st.text(max_size=30), st.text(max_size=30).map(lambda p: f"'{p}'"))),
    st.text(max_size=80),
)


@FUZZ
@given(ssh_commands)
def test_ssh_commands_give_a_git_service_or_a_policy_error(command: str) -> None:
    parsed = result_or_refusal(lambda: parse_git_command(command), tuple, PolicyError)
    if parsed is None:
        return
    service, path = parsed
    assert service in GIT_SERVICES and isinstance(path, str)
    result_or_refusal(lambda: project_from_path(path), str, PolicyError)


# -- public keys ---------------------------------------------------------------------------------

REAL_KEYS = [asyncssh.generate_private_key(kind).export_public_key().decode().strip()
             for kind in ("ssh-ed25519", "ecdsa-sha2-nistp256")]


def mangled_key(line: str, at: int, byte: int, cut: int) -> str:
    """A real key line with one byte of its blob changed and maybe its end cut off."""
    kind, data = line.split()[:2]
    blob = bytearray(base64.b64decode(data))
    blob[at % len(blob)] = byte
    return f"{kind} {base64.b64encode(bytes(blob[:len(blob) - cut])).decode()} me@host"


key_lines = st.one_of(
    st.sampled_from(REAL_KEYS),
    st.builds(mangled_key, st.sampled_from(REAL_KEYS), st.integers(0, 200), st.integers(0, 255), st.integers(0, 40)),
    st.builds("{} {} {}".format, st.sampled_from(["ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp521", "x"]),
              st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=20)),
    st.text(max_size=100),
)


@FUZZ
@given(key_lines)
def test_public_keys_parse_or_raise_a_key_format_error(line: str) -> None:
    key = result_or_refusal(lambda: parse_public_key(line), PublicKey, KeyFormatError)
    if key is not None:
        assert key.fingerprint.startswith("SHA256:") and key.openssh.startswith(key.key_type + " ")


# -- Dockerfiles ---------------------------------------------------------------------------------

docker_words = st.one_of(
    st.sampled_from(["debian:bookworm", "shop-b:2-abc", "$BASE", "${BASE:-x}", "${", "$", "AS", "as", "build",
                     "--from=build", "--from=$X", "--from=0", "--mount=type=cache,target=/c",
                     "--mount=type=cache,id=\"a b\"", "--mount=type=$T", "--mount=from=alpine", "--platform=x",
                     "<<EOF", "<<-'END'", "\\", "[\"ls\"]", "BASE=1", "X", "=", "\"", "'", "`"]),
    st.text(max_size=10),
)
docker_lines = st.one_of(
    st.builds(lambda keyword, words: " ".join([keyword, *words]),
              st.sampled_from(["FROM", "from", "ARG", "ENV", "RUN", "COPY", "ADD", "ONBUILD RUN", "ONBUILD COPY",
                               "# syntax=", "# escape=", "#", "EOF", "LABEL"]),
              st.lists(docker_words, max_size=5)),
    st.text(max_size=30),
)
dockerfiles = st.one_of(st.lists(docker_lines, max_size=10).map("\n".join), st.text(max_size=200))
OWNERS = {"shop-b:2-abc": ImageOwner("shop", "b")}


@FUZZ
@given(dockerfiles, st.dictionaries(st.sampled_from(["BASE", "X", "T", "BUILDKIT_SYNTAX"]), st.text(max_size=10),
                                    max_size=3))
def test_dockerfiles_give_their_images_or_a_dockerfile_error(text: str, args: dict[str, str]) -> None:
    refs = result_or_refusal(lambda: image_references(text, args), list, DockerfileError)
    if refs is not None:
        assert all(ref.line >= 1 for ref in refs)
    result_or_refusal(lambda: private_cache_mounts(text, "shop/a/0123"), str, DockerfileError)
    result_or_refusal(lambda: prepare(text, build_args=args, instance="shop", project="a", cache_key=b"k",
                                      owner_of=OWNERS.get), str, DockerfileError)


# -- one platform per module: no Docker, nothing runs a deployment --------------------------------

@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Platform:
    made = api_platform(Settings(data_dir=tmp_path_factory.mktemp("fuzz"), instance="fuzz",
                                 host="deploy.example.com"), {"alice": "admin", "bob": "deployer"})
    # A deployment is recorded and never run: what is fuzzed is how a request is read.
    made.deployer.queue.submit = lambda ticket: None  # type: ignore[method-assign]
    made.store.add_project("shop", "alice")
    made.store.grant("bob", "shop")
    return made


# -- API bodies, paths and query strings ---------------------------------------------------------

# Endpoints that reach Docker (or DNS, or GitHub) measure those, not the reading of a request.
UNREACHED = {("DELETE", "/projects/{project}"), ("POST", "/projects/{project}/domains"),
             ("GET", "/github/repos"), ("GET", "/meta")}
DOCKER_BOUND = ("/logs", "/run", "/scale")
# /events follows the projects and never ends by design (the dashboard's tests follow it); /nodes
# would act on this machine's real swarm (tests/test_multinode.py drives it on a rig of its own).
ENDLESS_OR_REAL = ("/events", "/nodes")
ROUTES = [ep for ep in ENDPOINTS.endpoints
          if (ep.method, ep.path) not in UNREACHED and not ep.path.endswith(DOCKER_BOUND)
          and not ep.path.startswith(ENDLESS_OR_REAL)]
PATH_VALUES = {"project": ["shop"], "number": ["1", "0", "99999999999999999999999"], "id": ["7", "x"],
               "name": ["bob", "nobody"], "service": ["web", "cron"], "domain": ["a.example.com"]}


def near_schema(schema: dict) -> st.SearchStrategy[Any]:
    """JSON shaped by an endpoint's schema (its fields, their types) with any values inside:
    past the type checks, to where the handlers and the store read them."""
    if "anyOf" in schema:
        return st.one_of([near_schema(option) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        required = set(schema.get("required", []))
        named = st.fixed_dictionaries({name: near_schema(sub) for name, sub in properties.items() if name in required},
                                      optional={name: near_schema(sub) for name, sub in properties.items()
                                                if name not in required})
        if isinstance(extra, dict):
            named = st.builds(lambda a, b: {**a, **b}, named,
                              st.dictionaries(st.one_of(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True),
                                                        any_text), near_schema(extra), max_size=3))
        return named if properties or extra else json_values
    if kind == "array":
        return st.lists(near_schema(schema.get("items", {})), max_size=4)
    if kind == "string":
        if "pattern" in schema:
            return st.one_of(st.from_regex(schema["pattern"], fullmatch=True), any_text)
        return any_text
    if kind == "integer":
        return st.one_of(st.integers(), big_ints)
    return json_values


def rarely(draw: st.DrawFn, usual: st.SearchStrategy[T], odd: st.SearchStrategy[T]) -> T:
    """Mostly `usual`, one time in five `odd`: a request broken in one place reaches further
    than one broken everywhere (refused at its first fault)."""
    return draw(odd if draw(st.integers(0, 4)) == 3 else usual)  # not 0: hypothesis draws its ends most


@st.composite
def api_requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, str]:
    ep = draw(st.sampled_from(ROUTES))
    path = ep.path
    for name in ep.path_names:
        value = rarely(draw, st.sampled_from(PATH_VALUES.get(name, ["x"])), st.text(max_size=20))
        path = path.replace("{" + name + "}", quote(value, safe="") or "x")
    values = st.one_of(st.text(max_size=12), st.integers().map(str),
                       st.sampled_from(["true", "no", "", "-1", "1e3", "٣", "1_0", "99999999999999999999"]))
    known = st.lists(st.tuples(st.sampled_from(sorted(ep.query)), values), max_size=3) if ep.query else st.just([])
    query = rarely(draw, known, st.lists(st.tuples(st.text(max_size=8), values), max_size=3))
    body = rarely(draw, near_schema(ep.body or OBJECT).map(lambda v: json.dumps(v).encode()),
                  st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)))
    auth = rarely(draw, st.just("key"), st.one_of(st.sampled_from(["Bearer nope", "Basic !!", "Basic " + "a" * 200]),
                                                  header_text))
    return ep.method, f"/api/v1{path}?{urlencode(query)}", body if ep.body is not None else None, auth


@pytest.fixture(scope="module")
def api(platform: Platform) -> TestClient:
    return TestClient(build_app(platform, ENDPOINTS.endpoints))


def assert_clean_answer(status: int, body: bytes) -> None:
    """A 2xx-4xx; an error is `{"error": {"code", "message"}}` with a message."""
    assert status < 500, f"{status}: {body[:300]!r}"
    if status >= 400:
        error = json.loads(body)["error"]
        assert error["code"] and error["message"].strip()


@FUZZ
@given(api_requests())
def test_api_requests_get_an_answer_never_a_500(platform: Platform, api: TestClient,
                                               request: tuple[str, str, bytes | None, str]) -> None:
    method, url, body, auth = request
    # A key of its own: an earlier example may have revoked the last one (DELETE /api-keys/{id}).
    key = apikeys.create(platform.store, "alice", "alice", "fuzz")[1]
    headers = {"Authorization": f"Bearer {key}" if auth == "key" else auth}
    response = bounded(lambda: api.request(method, url, content=body, headers=headers))
    assert_clean_answer(response.status_code, response.content)


# -- webhooks: the project's and the GitHub App's ------------------------------------------------

APP_SECRET = "app-secret"
shas = st.one_of(st.just("a" * 40), st.text(alphabet="0123456789abcdef", min_size=40, max_size=40), any_text)
push_payloads = st.fixed_dictionaries({}, optional={
    "ref": st.one_of(st.sampled_from(["refs/heads/main", "refs/heads/x", "refs/tags/v1"]), json_values),
    "after": shas, "deleted": st.one_of(st.booleans(), json_values),
    "pusher": st.one_of(st.fixed_dictionaries({"name": json_values}), json_values),
    "repository": st.one_of(st.fixed_dictionaries({"full_name": st.sampled_from(["octo/shop", "a/b"]) | any_text}),
                            json_values),
})
app_payloads = st.fixed_dictionaries({}, optional={
    "action": st.one_of(st.sampled_from(["created", "deleted", "suspend", "unsuspend", "revoked",
                                         "new_permissions_accepted"]), json_values),
    "installation": st.one_of(st.fixed_dictionaries({"id": st.one_of(st.integers(), big_ints, json_values)},
                                                    optional={"account": st.one_of(
                                                        st.fixed_dictionaries({"login": json_values}), json_values)}),
                              json_values),
    "sender": st.one_of(st.fixed_dictionaries({"login": json_values}), json_values),
    "repositories": json_values, "repositories_added": json_values, "repositories_removed": json_values,
})
events = st.one_of(st.sampled_from(["push", "ping", "installation", "installation_repositories",
                                    "github_app_authorization", "issues", ""]), header_text)
bodies = st.one_of(push_payloads.map(lambda p: json.dumps(p).encode()), app_payloads.map(lambda p: json.dumps(p).encode()),
                   json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=60))


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[bytes, dict[str, str], bool]:
    """A body, its headers, and whether it carries the right signature (the secret is filled in later)."""
    body = draw(bodies)
    headers = {"X-GitHub-Event": draw(events), "X-GitHub-Delivery": draw(st.uuids().map(str) | header_text)}
    for name in draw(st.lists(st.sampled_from(["X-GitHub-Event", "X-GitHub-Delivery"]), max_size=2, unique=True)):
        del headers[name]  # a missing header
    headers.update(draw(st.dictionaries(st.sampled_from(["X-Hub-Signature", "Content-Type", "X-Other"]), header_text,
                                        max_size=2)))
    signed = draw(st.booleans())
    if not signed:
        headers["X-Hub-Signature-256"] = draw(st.one_of(header_text, st.just("sha256=" + "0" * 64)))
    return body, headers, signed


@pytest.fixture(scope="module")
def hooks_client(platform: Platform) -> tuple[TestClient, str]:
    platform.store.add_github_app({"app_id": 42, "slug": "disco-fuzz", "name": "disco fuzz", "owner": "octo",
                                   "html_url": "https://github.com/apps/disco-fuzz", "client_id": "Iv1.x",
                                   "client_secret": "c", "webhook_secret": APP_SECRET, "pem": "k",
                                   "created_by": "alice", "created_at": "now"})
    secret = github.link(platform, "alice", "shop", "octo/shop")["secret"]
    return TestClient(build_app(platform, ENDPOINTS.endpoints)), secret


@FUZZ
@given(deliveries(), st.booleans())
def test_webhook_deliveries_are_answered_and_unsigned_ones_refused(hooks_client: tuple[TestClient, str],
                                                                  delivery: tuple[bytes, dict[str, str], bool],
                                                                  to_app: bool) -> None:
    client, project_secret = hooks_client
    body, headers, signed = delivery
    secret, url = (APP_SECRET, "/webhooks/github/app") if to_app else (project_secret, "/webhooks/github/shop")
    if signed:
        headers = {**headers, "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    response = bounded(lambda: client.post(url, content=body, headers=headers))
    assert_clean_answer(response.status_code, response.content)
    if not signed:  # the signature is checked before anything else: never accepted
        assert response.status_code in (400, 401), response.text


# -- receive-pack: pkt-lines, ref updates and packs ----------------------------------------------

LIMITS = PushLimits(max_input_size=1 << 20, max_object_size=1 << 20, max_inflated_size=1 << 22)


def pkt_line(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def pack_of_files(files: dict[bytes, bytes]) -> tuple[bytes, bytes]:
    """A pack of one commit whose tree holds `files`, and the commit's id."""
    tree = Tree()
    blobs = []
    for name, content in files.items():
        blob = Blob.from_string(content)
        tree.add(name, 0o100644, blob.id)
        blobs.append(blob)
    commit = Commit()
    commit.tree, commit.message = tree.id, b"fuzz"
    commit.author = commit.committer = b"Fuzz <fuzz@example.com>"
    commit.commit_time = commit.author_time = 0
    commit.commit_timezone = commit.author_timezone = 0
    out = io.BytesIO()
    write_pack_objects(out.write, [(o, None) for o in (*blobs, tree, commit)], DEFAULT_OBJECT_FORMAT)
    return out.getvalue(), commit.id


hex_shas = st.one_of(st.binary(min_size=20, max_size=20).map(lambda b: b.hex().encode()), st.just(b"0" * 40),
                     st.binary(max_size=40))
wire_refs = st.one_of(st.sampled_from([b"refs/heads/main", b"refs/heads/x", b"refs/tags/v1", b"HEAD",
                                       b"refs/heads/../x", b"refs/heads/\xff"]), st.binary(max_size=20))
capabilities = st.sampled_from([b"", b"\x00report-status side-band-64k", b"\x00report-status", b"\x00", b"\x00\xff"])
ref_lines = st.builds(lambda old, new, ref, caps: old + b" " + new + b" " + ref + caps,
                      hex_shas, hex_shas, wire_refs, capabilities)
packs = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda version, count, rest: b"PACK" + struct.pack(">LL", version, count) + rest,
              st.sampled_from([2, 3, 0, 2**32 - 1]), st.sampled_from([0, 1, 3, 2**32 - 1]), st.binary(max_size=80)),
)


@st.composite
def receive_streams(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "framed", "commit"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "commit":  # a real pack, its commit's disco.toml and Procfile random
        files = {b"disco.toml": draw(st.one_of(disco_tomls.map(str.encode), st.binary(max_size=40))),
                 b"Procfile": draw(st.one_of(procfiles.map(lambda t: t.encode("utf-8", "surrogatepass")),
                                             st.binary(max_size=40)))}
        pack, commit = pack_of_files({k: v for k, v in files.items() if draw(st.booleans())})
        return pkt_line(b"0" * 40 + b" " + commit + b" refs/heads/main\x00report-status") + b"0000" + pack
    lines = draw(st.lists(st.one_of(ref_lines, st.binary(max_size=30)), max_size=3))
    framing = b"".join(draw(st.sampled_from([pkt_line, lambda d: b"%04x" % draw(st.integers(0, 0xFFFF)) + d]))(line)
                       for line in lines)
    return framing + draw(st.sampled_from([b"0000", b"", b"0001", b"000"])) + draw(packs)


@pytest.fixture(scope="module")
def bare_repo(platform: Platform) -> Path:
    path = platform.repo_path("shop")
    gitrepo.init_bare(path)
    return path


class BytesChannel:
    """ChannelIO's two calls over bytes in memory: what the client sends, then its end."""

    def __init__(self, incoming: bytes) -> None:
        self.recv = io.BytesIO(incoming).read
        self.write = io.BytesIO().write


def receive(platform: Platform, repo_path: Path, stream: bytes) -> PushContext:
    context = PushContext(platform, "shop", "alice", LIMITS, threading.Lock())
    with Repo(str(repo_path)) as repo:
        run_receive_pack(repo, BytesChannel(stream), context)  # type: ignore[arg-type]
    return context


@FUZZ
@given(receive_streams())
def test_receive_pack_streams_end_with_a_result_or_a_bad_client_error(platform: Platform, bare_repo: Path,
                                                                      stream: bytes) -> None:
    context = result_or_refusal(lambda: receive(platform, bare_repo, stream), PushContext, BadClient)
    if context is not None:
        assert all(reason.strip() for _, reason in context.refused)
    with Repo(str(bare_repo)) as repo:  # no stream here holds a deployable commit: nothing may land
        assert not repo.get_refs(), f"a fuzzed push made refs: {repo.get_refs()}"
