"""disco.toml written from a config (what `disco config:show` prints) reads back as that config."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.appconfig import (
    AppConfig,
    BuildConfig,
    Limits,
    PublishedPort,
    ReleaseConfig,
    ServiceConfig,
    Volume,
    parse_app_config,
    with_procfile,
)
from runtime.configtoml import render_toml

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=12)
COMMAND = st.sampled_from(["./run", "./w 'a b'", 'sh -c "x\ty"\n', "über --ß=1", 'a\\b "c\'d"'])
PATH = st.sampled_from(["Dockerfile", "d/Dockerfile", "a b/c.Dockerfile", "x\"y"])
BUILD = st.builds(BuildConfig, dockerfile=PATH, context=st.sampled_from([".", "app", "sub/dir"]),
                  args=st.dictionaries(TEXT, TEXT, max_size=3))
VOLUMES = st.lists(st.builds(Volume, st.sampled_from(["data", "c.1", "a_b-c"]), st.sampled_from(["/data", "/x/y"])),
                   max_size=2).map(tuple)
LIMITS = st.builds(Limits, memory=st.sampled_from([None, "256M", "1G", "512m"]),
                   cpus=st.one_of(st.none(), st.sampled_from([0.01, 0.5, 1.0, 2.5, 1024.0])),
                   pids=st.one_of(st.none(), st.integers(16, 1_000_000)))


@st.composite
def services(draw: st.DrawFn, name: str) -> ServiceConfig:
    kind = draw(st.sampled_from(["running", "static"] if name == "web" else ["running", "scheduled", "oneoff"]))
    image = draw(st.sampled_from(["default", "api"]))
    if kind == "static":
        source = draw(st.sampled_from(["image", "repo"]))
        folder = draw(st.sampled_from(["dist", "public/site"] + (["/app/dist"] if source == "image" else [])))
        return ServiceConfig(name, static=folder, static_source=source, image=image)
    common = dict(command=draw(st.one_of(st.none(), COMMAND)), volumes=draw(VOLUMES), limits=draw(LIMITS),
                  image=image)
    if kind == "scheduled":
        return ServiceConfig(name, schedule=draw(st.sampled_from(["*/5 * * * *", "@daily"])),
                             timeout=draw(st.integers(1, 86400)), **common)
    if kind == "oneoff":
        return ServiceConfig(name, oneoff=True, **common)
    health = draw(st.sampled_from([(None, None), ("/up", None), (None, "check --now")]))
    return ServiceConfig(name, port=draw(st.one_of(st.none(), st.integers(1, 65535))),
                         replicas=draw(st.integers(0, 100)), health=health[0], health_command=health[1],
                         health_timeout=draw(st.integers(1, 3600)), internal=draw(st.booleans()),
                         publish=(PublishedPort(2000 + len(name), draw(st.integers(1, 65535)),
                                                draw(st.sampled_from(["tcp", "udp"]))),) if draw(st.booleans()) else (),
                         **common)


@st.composite
def configs(draw: st.DrawFn) -> AppConfig:
    names = draw(st.lists(st.sampled_from(["web", "worker", "clock", "ab"]), unique=True, max_size=4))  # each publishes 2000+len(name)
    made = {name: draw(services(name)) for name in names}
    release = draw(st.one_of(st.none(), st.builds(ReleaseConfig, st.sampled_from(["", "./migrate"]),
                                                  timeout=st.integers(1, 86400))))
    images = draw(st.dictionaries(st.just("api"), BUILD, min_size=1, max_size=1))
    return AppConfig(build=draw(BUILD), services=made or {"web": ServiceConfig("web")}, release=release,
                     declared=frozenset(made), images=images)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_a_config_written_as_disco_toml_reads_back_the_same(config: AppConfig):
    assert parse_app_config(render_toml(config, ("a header", "# with a hash"))) == config


def test_only_what_differs_from_the_defaults_is_written():
    assert render_toml(AppConfig()) == ""
    assert render_toml(parse_app_config('[services.web]\nport = 5000\n')) == "[services.web]\nport = 5000\n"


def test_what_only_a_procfile_can_say_is_not_written():
    merged = with_procfile(AppConfig(), "web: ./serve $PORT\n")
    with pytest.raises(ValueError, match="Procfile"):
        render_toml(merged)
