"""Docker object names never collide: no two (instance, project, service) triples, and no two
(instance, project, volume) triples, give one name (runtime/names.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hooks.policy import PROJECT_NAME
from runtime import names
from runtime.appconfig import SERVICE_NAME, VOLUME_NAME
from runtime.docker_engine import Engine
from runtime.settings import INSTANCE_NAME

instances = st.from_regex(INSTANCE_NAME, fullmatch=True)
projects = st.from_regex(PROJECT_NAME, fullmatch=True)
services = st.from_regex(SERVICE_NAME, fullmatch=True)
volumes = st.from_regex(VOLUME_NAME, fullmatch=True)
# Names made mostly of hyphens are where joining goes wrong; make them common.
hyphenated = st.lists(st.sampled_from(["a", "b", "-", "--"]), min_size=1, max_size=6).map(lambda xs: "a" + "".join(xs))


@settings(max_examples=400)
@given(st.lists(st.one_of(instances, projects, services, volumes, hyphenated), min_size=1, max_size=4))
def test_split_undoes_join(parts: list[str]):
    assert names.split(names.join(*parts)) == parts


@settings(max_examples=400)
@given(st.tuples(st.one_of(instances, hyphenated), st.one_of(projects, hyphenated), st.one_of(services, hyphenated)),
       st.tuples(st.one_of(instances, hyphenated), st.one_of(projects, hyphenated), st.one_of(services, hyphenated)))
def test_different_triples_never_share_a_service_name(first: tuple[str, str, str], second: tuple[str, str, str]):
    if first != second:
        assert Engine(first[0]).service_name(*first[1:]) != Engine(second[0]).service_name(*second[1:])


@given(instances, projects, services)
def test_service_names_are_dns_labels(instance: str, project: str, service: str):
    name = Engine(instance).service_name(project, service)
    assert len(name) <= 63 and not name.startswith("-")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    if len(names.join(instance, project, service)) > 63:
        assert name[0] == "0"  # digested names start with a digit, joined ones with the instance's letter
    else:
        assert name == names.join(instance, project, service)


def test_the_pairs_that_collided_before():
    disco = Engine("disco")
    assert disco.service_name("a", "b-web") != disco.service_name("a-b", "web")
    assert disco.service_name("x-y", "web") != Engine("disco-x").service_name("y", "web")
    assert names.join("disco", "a", "b-data") != names.join("disco", "a-b", "data")
    assert Engine("disco-x").proxy_name != disco.service_name("x", "caddy")
    assert Engine("disco").proxy_name == "disco-caddy"  # unchanged for instances without a '-'
    # Names without a '-' in their parts read as they always did, so those objects keep them.
    assert disco.service_name("myapp", "web") == disco.legacy_service_name("myapp", "web") == "disco-myapp-web"
    assert disco.service_name("my-app", "web") == "disco-my--app-web"
    assert disco.legacy_service_name("my-app", "web") == "disco-my-app-web"
