"""Property-based run of the API against its own OpenAPI document (schemathesis).

No endpoint may answer 500 to any input, and no response may contradict the document. Docker
is not reachable from these platforms on purpose: endpoints that need it must fail cleanly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
# Loaded now, at collection, not lazily by schemathesis in the middle of a test: there, pytest's
# rewriting of it called compile(), which failed once in CI with CPython 3.11.7's "AST constructor
# recursion depth mismatch" (a recursion counter an earlier test's RecursionError can leave off).
import schemathesis.specs.openapi.object_authorization  # noqa: F401
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, settings

from api.app import build_app
from conftest import api_platform
from api.endpoints import ENDPOINTS
from hooks import apikeys
from hooks.platform import Platform
from runtime.settings import Settings


def _platform() -> tuple[Platform, str]:
    data = Path(tempfile.mkdtemp(prefix="disco-schema-"))
    platform = api_platform(Settings(data_dir=data, instance="schema"))
    platform.store.add_project("shop", "alice")
    platform.store.set_env("shop", {"A": "1"})
    return platform, apikeys.create(platform.store, "test", "alice", "schemathesis")[1]


PLATFORM, KEY = _platform()
APP = build_app(PLATFORM, ENDPOINTS.endpoints)
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP)

# Endpoints that talk to Docker are exercised for real in the end-to-end tests; here they
# would only measure how long a missing engine takes to answer.
# /events never ends by design (it follows the projects); the dashboard's tests follow it.
# /nodes... would act on the swarm of whatever engine answers: tests/test_multinode.py covers them.
DOCKER_BOUND = ("/logs", "/run", "/scale", "/meta", "/events")


@schema.include(path_regex="^(?!.*/nodes(/|$))(?!.*(" + "|".join(DOCKER_BOUND).replace("/", r"\/") + ")$)").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_document(case):
    # Rules the schema cannot state (a key's format, a name already taken) refuse some
    # schema-valid input with a declared 4xx, so "every valid request is accepted" is not checked.
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=[positive_data_acceptance])
