"""disco.json: what each key maps onto, Disco's defaults, and refusals that name the key path,
for malformed and hostile input too; and disco.toml written back from any config it reads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.appconfig import (
    AppConfig,
    AppConfigError,
    BuildConfig,
    PublishedPort,
    ReleaseConfig,
    ServiceConfig,
    Volume,
    parse_app_config,
)
from runtime.appsource import config_at, file_config_at
from runtime.configtoml import render_toml
from runtime.discojson import parse_disco_json


def read(services: dict[str, Any], **top: Any) -> AppConfig:
    return parse_disco_json(json.dumps({"version": "1.0", "services": services, **top}))


def test_every_type_and_key_maps_onto_the_model():
    config = read({
        "web": {"port": 8080, "command": "./serve --fast", "image": "api",
                "volumes": [{"name": "data", "destinationPath": "/data"}],
                "publishedPorts": [{"publishedAs": 5432, "fromContainerPort": 5432},
                                   {"publishedAs": 5353, "fromContainerPort": 53, "protocol": "udp"}],
                "exposedInternally": True, "health": {"command": "pg_isready -q"}},
        "worker": {"type": "container", "command": "./work"},
        "shell": {"type": "command", "command": "./manage.py shell", "volumes": [{"name": "data",
                                                                                "destinationPath": "/data"}]},
        "nightly": {"type": "cron", "schedule": "0 3 * * *", "command": "./report", "timeout": 600},
        "hook:deploy:start:before": {"type": "command", "command": "./migrate", "timeout": 120,
                                     "volumes": [{"name": "data", "destinationPath": "/data"}]},
    }, images={"default": {"dockerfile": "docker/Dockerfile", "context": "app"}, "api": {"context": "api"}})
    assert config.build == BuildConfig("docker/Dockerfile", "app")
    assert config.images == {"api": BuildConfig(context="api")}
    assert config.services["web"] == ServiceConfig(
        "web", port=8080, command="./serve --fast", image="api", volumes=(Volume("data", "/data"),),
        publish=(PublishedPort(5432, 5432), PublishedPort(5353, 53, "udp")), internal=True,
        health_command="pg_isready -q")
    assert config.services["worker"] == ServiceConfig("worker", command="./work")
    assert config.services["shell"] == ServiceConfig("shell", command="./manage.py shell", oneoff=True,
                                                     volumes=(Volume("data", "/data"),))
    assert config.services["nightly"] == ServiceConfig("nightly", schedule="0 3 * * *", command="./report",
                                                       timeout=600)
    assert config.release == ReleaseConfig("./migrate", timeout=120)
    assert config.declared == {"web", "worker", "shell", "nightly"} and config.source == "disco.json"
    assert set(config.running_services) == {"web", "worker"}


def test_what_the_file_leaves_out_is_disco_s_default():
    config = read({"web": {}, "tick": {"type": "cron"}, "hook:deploy:start:before": {"type": "command",
                                                                                   "command": "./m"}})
    assert config.services["web"].port == 8000  # Disco routes to 8000 whatever the image EXPOSEs
    assert config.services["tick"].schedule == "* * * * *" and config.services["tick"].timeout == 300
    assert config.release == ReleaseConfig("./m", timeout=300)
    assert read({"worker": {}}).services["worker"].port is None  # only web's port means anything to Disco
    assert read({"web": {}}, version=1).build == BuildConfig()


def test_static_and_generator_sites():
    static = read({"web": {"type": "static"}}).services["web"]
    assert (static.static, static.static_source) == ("dist", "repo")
    assert read({"web": {"type": "static"}}).images_to_build == {}  # Disco builds nothing for it
    generated = read({"web": {"type": "generator", "publicPath": "/app/public", "image": "site"}},
                     images={"site": {"dockerfile": "site.Dockerfile"}}).services["web"]
    assert (generated.static, generated.static_source, generated.image) == ("/app/public", "image", "site")


REFUSED = [
    # the file itself
    ("[1, 2]", "disco.json must be a JSON object"),
    ('"web"', "disco.json must be a JSON object"),
    ("{", "disco.json is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
    ("", "disco.json is not valid JSON"),
    ('\ufeff{"version": "1.0"}', "disco.json is not valid JSON"),
    ('{"services": {"web": {}}}', '"version" is missing'),
    ('{"version": "2.0", "services": {"web": {}}}', 'version "2.0" is not one this server reads'),
    ('{"version": true, "services": {"web": {}}}', "version must be a string"),
    ('{"version": "1.0"}', '"services" is missing; Disco would deploy nothing'),
    ('{"version": "1.0", "services": {}}', '"services" is empty'),
    ('{"version": "1.0", "services": []}', "disco.json: services must be an object, got an array"),
    ('{"version": "1.0", "services": {"web": {}}, "volumes": []}', "unknown key 'volumes'"),
    # hostile numbers and keys
    ('{"version": NaN, "services": {"web": {}}}', "NaN is not a number JSON allows"),
    ('{"version": "1.0", "services": {"web": {"port": Infinity}}}', "Infinity is not a number JSON allows"),
    ('{"version": "1.0", "services": {"web": {"port": 1e999}}}', "too large"),
    ('{"version": "1.0", "services": {"web": {"port": ' + "9" * 5000 + "}}}", "too large"),
    ('{"version": "1.0", "services": {"web": {"port": 8080.0}}}', "services.web.port must be an integer, got 8080.0"),
    ('{"version": "1.0", "services": {"web": {"port": true}}}', "services.web.port must be an integer, got true"),
    ('{"version": "1.0", "services": {"web": {"port": "8080"}}}', 'services.web.port must be an integer, got "8080"'),
    ('{"version": "1.0", "services": {"web": {"port": 0}}}', "services.web.port must be from 1 to 65535, got 0"),
    ('{"version": "1.0", "services": {"web": {"port": 1, "port": 2}}}', "key 'port' appears twice in services.web"),
    ('{"version": "1.0", "services": {"web": {}, "web": {}}}', "key 'web' appears twice in services"),
    ('{"version": "1.0", "version": "1.0", "services": {"web": {}}}', "key 'version' appears twice in the top"),
    ('{"version": "1.0", "services": {"web": {"command": "a\\u0000b"}}}', "services.web.command holds a NUL"),
    ('{"version": "1.0", "services": {"web": {"command": "\\ud800"}}}', "services.web.command holds a lone UTF-16"),
    ('{"version": "1.0", "services": {"web": {"command": null}}}', "services.web.command must be a string, got null"),
    ('{"version": "1.0", "services": {"web": {"command": "echo \'open"}}}', "services.web.command cannot be split"),
    ('{"version": "1.0", "services": {"web": {"command": "  "}}}', "services.web.command is empty"),
    ('{"version": "1.0", "services": {"Web": {}}}', "service name 'Web' is invalid"),
    ('{"version": "1.0", "services": {"a/../b": {}}}', "service name 'a/../b' is invalid"),
    # keys that are unknown, that do not apply, that we cannot honour
    ('{"version": "1.0", "services": {"web": {"replicas": 2}}}', "unknown key 'services.web.replicas'"),
    ('{"version": "1.0", "services": {"web": {"extraSwarmParams": "--x"}}}',
     "services.web.extraSwarmParams is not supported here"),
    ('{"version": "1.0", "services": {"web": {"build": "npm run build", "image": "node:20"}}}',
     "services.web.build is not supported here"),
    ('{"version": "1.0", "services": {"web": {"type": "cgi"}}}', "services.web.type 'cgi' is not supported here"),
    ('{"version": "1.0", "services": {"web": {"type": "lambda"}}}', "services.web.type must be one of"),
    ('{"version": "1.0", "services": {"web": {}, "hook:deploy:start:after": {"type": "command", "command": "x"}}}',
     "services.hook:deploy:start:after is not supported here"),
    ('{"version": "1.0", "services": {"web": {"timeout": 30}}}', "services.web.timeout does not apply to a container"),
    ('{"version": "1.0", "services": {"web": {"schedule": "* * * * *"}}}', "services.web.schedule does not apply"),
    ('{"version": "1.0", "services": {"web": {"type": "static", "port": 80}}}',
     "services.web.port does not apply to a static service"),
    ('{"version": "1.0", "services": {"web": {"type": "generator", "command": "x"}}}',
     "services.web.command does not apply to a generator service"),
    ('{"version": "1.0", "services": {"w": {"type": "command", "health": {"command": "x"}}}}',
     "services.w.health does not apply to a command service"),
    ('{"version": "1.0", "services": {"t": {"type": "cron", "exposedInternally": true}}}',
     "services.t.exposedInternally does not apply to a cron service"),
    ('{"version": "1.0", "services": {"docs": {"type": "static"}}}', "only the web service can be a static site"),
    ('{"version": "1.0", "services": {"web": {"type": "cron"}}}', "web gets the project's HTTP traffic"),
    ('{"version": "1.0", "services": {"web": {"type": "static", "publicPath": "../etc"}}}',
     "services.web.publicPath must be a folder"),
    ('{"version": "1.0", "services": {"web": {"type": "static", "publicPath": "/srv"}}}',
     "relative to the repo root"),
    # nested values
    ('{"version": "1.0", "services": {"web": {"volumes": {"name": "d"}}}}', "services.web.volumes must be an array"),
    ('{"version": "1.0", "services": {"web": {"volumes": [{"name": "d"}]}}}',
     'services.web.volumes[0] needs "destinationPath"'),
    ('{"version": "1.0", "services": {"web": {"volumes": [{"name": "d", "destinationPath": "/d", "ro": true}]}}}',
     "unknown key 'services.web.volumes[0].ro'"),
    ('{"version": "1.0", "services": {"web": {"volumes": [{"name": "../x", "destinationPath": "/d"}]}}}',
     "services.web.volumes[0].name"),
    ('{"version": "1.0", "services": {"web": {"volumes": [{"name": "d", "destinationPath": "/"}]}}}',
     "services.web.volumes[0].destinationPath must be an absolute path below /"),
    ('{"version": "1.0", "services": {"web": {"volumes": [{"name": "a", "destinationPath": "/d"}, '
     '{"name": "b", "destinationPath": "/d"}]}}}', "services.web.volumes[1].destinationPath '/d' is already"),
    ('{"version": "1.0", "services": {"web": {"publishedPorts": [{"publishedAs": 80, "fromContainerPort": 80}]}}}',
     "services.web.publishedPorts[0].publishedAs must be from 1024 to 65535"),
    ('{"version": "1.0", "services": {"web": {"publishedPorts": [{"publishedAs": 5000, "fromContainerPort": 0}]}}}',
     "services.web.publishedPorts[0].fromContainerPort must be from 1 to 65535"),
    ('{"version": "1.0", "services": {"web": {"publishedPorts": [{"publishedAs": 5000, "fromContainerPort": 5, '
     '"protocol": "sctp"}]}}}', 'services.web.publishedPorts[0].protocol must be "tcp" or "udp"'),
    ('{"version": "1.0", "services": {"web": {"publishedPorts": [{"publishedAs": 5000, "fromContainerPort": 5}]}, '
     '"db": {"publishedPorts": [{"publishedAs": 5000, "fromContainerPort": 5}]}}}',
     "services.db.publishedPorts[0]: port 5000/tcp is already published by services.web"),
    ('{"version": "1.0", "services": {"web": {"health": {}}}}', "services.web.health needs a command"),
    ('{"version": "1.0", "services": {"web": {"health": "/up"}}}', "services.web.health must be an object"),
    ('{"version": "1.0", "services": {"web": {"exposedInternally": 1}}}',
     "services.web.exposedInternally must be true or false, got 1"),
    ('{"version": "1.0", "services": {"t": {"type": "cron", "schedule": "61 * * * *"}}}', "services.t.schedule:"),
    ('{"version": "1.0", "services": {"t": {"type": "cron", "timeout": 0}}}', "services.t.timeout must be from 1"),
    ('{"version": "1.0", "services": {"web": {"image": "api"}}}', "services.web.image 'api' is not under images"),
    ('{"version": "1.0", "services": {"web": {}}, "images": {"api": {"dockerfile": "/etc/passwd"}}}',
     "images.api.dockerfile must be a relative path inside the repo"),
    ('{"version": "1.0", "services": {"web": {}}, "images": {"default": {"context": "../.."}}}',
     "images.default.context must be a relative path inside the repo"),
    ('{"version": "1.0", "services": {"web": {}}, "images": {"default": {"args": {}}}}',
     "unknown key 'images.default.args'"),
    ('{"version": "1.0", "services": {"web": {}}, "images": {"Bad Name": {}}}', "image name 'Bad Name' is invalid"),
    # the deploy hook, our release command
    ('{"version": "1.0", "services": {"web": {}, "hook:deploy:start:before": {"command": "x"}}}',
     'its type must be "command"'),
    ('{"version": "1.0", "services": {"web": {}, "hook:deploy:start:before": {"type": "command"}}}',
     "services.hook:deploy:start:before needs a command"),
    ('{"version": "1.0", "services": {"web": {}, "hook:deploy:start:before": {"type": "command", "command": "x", '
     '"volumes": [{"name": "other", "destinationPath": "/o"}]}}}', "the release command gets the web service's"),
    ('{"version": "1.0", "services": {"hook:deploy:start:before": {"type": "command", "command": "x"}}}',
     "services holds only hook:deploy:start:before"),
]


@pytest.mark.parametrize("text, said", REFUSED)
def test_refusals_name_the_key_and_the_problem(text: str, said: str):
    with pytest.raises(AppConfigError) as refused:
        parse_disco_json(text)
    assert said in str(refused.value)
    assert str(refused.value).startswith("disco.json")


def test_size_and_depth_are_bounded():
    with pytest.raises(AppConfigError, match="larger than 256 KiB"):
        parse_disco_json(" " * (257 << 10))
    with pytest.raises(AppConfigError, match="(too deeply|must be an object)"):
        parse_disco_json("[" * 100_000 + "]" * 100_000)
    deep = '{"version": "1.0", "services": {"web": {"command": ' + "[" * 50_000 + "]" * 50_000 + "}}}"
    with pytest.raises(AppConfigError):
        parse_disco_json(deep)


# -- the repo: which file is read ---------------------------------------------------------------

def repo_with(tmp_path: Path, files: dict[str, bytes | str]) -> tuple[Path, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    return tmp_path / ".git", sha


JSON_APP = json.dumps({"version": "1.0", "services": {"web": {"port": 8080}, "worker": {"command": "./w"}}})


def test_disco_toml_wins_over_disco_json_and_says_so(tmp_path: Path):
    repo, sha = repo_with(tmp_path, {"disco.toml": "[services.web]\nport = 5000\n", "disco.json": "not even JSON"})
    config = config_at(repo, sha)
    assert config.source == "disco.toml" and config.services["web"].port == 5000 and list(config.services) == ["web"]
    assert config.notes == ("disco.json ignored: disco.toml is read when a repo has both",)


def test_disco_json_alone_is_read_and_merged_with_the_procfile(tmp_path: Path):
    repo, sha = repo_with(tmp_path, {"disco.json": JSON_APP, "Procfile": "worker: ./work --hard\n"})
    assert file_config_at(repo, sha).services["worker"].command == "./w"
    with pytest.raises(AppConfigError, match="services.worker.command is also set in disco.json"):
        config_at(repo, sha)
    repo, sha = repo_with(tmp_path / "other", {"disco.json": JSON_APP, "Procfile": "clock: ./clock\n"})
    config = config_at(repo, sha)
    assert config.source == "disco.json" and config.notes[0].startswith("read disco.json (there is no disco.toml)")
    assert set(config.services) == {"web", "worker", "clock"} and config.services["web"].port == 8080


def test_disco_json_that_is_not_utf8_is_refused(tmp_path: Path):
    repo, sha = repo_with(tmp_path, {"disco.json": b'{"version": "1.0", "services": {"w\xe9b": {}}}'})
    with pytest.raises(AppConfigError, match="^disco.json is not UTF-8 text$"):
        config_at(repo, sha)


# -- any input: a config or a refusal, and the config written as disco.toml reads back the same --

def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 70000), st.sampled_from(
        ["", "dist", "/data", "./run --x", "* * * * *", "0 3 * * *", "tcp", "udp", "default", "web", "data",
         "container", "static", "generator", "command", "cron", "cgi", "1.0", "a'b"]), st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(keys(), inner, max_size=4)), max_leaves=12)


def keys() -> st.SearchStrategy[str]:
    return st.sampled_from(["type", "port", "command", "image", "volumes", "schedule", "publicPath",
                            "publishedPorts", "exposedInternally", "health", "timeout", "name", "destinationPath",
                            "publishedAs", "fromContainerPort", "protocol", "dockerfile", "context", "web",
                            "worker", "default", "x"])


@st.composite
def disco_files(draw: st.DrawFn) -> dict[str, Any]:
    volume = st.fixed_dictionaries({"name": st.sampled_from(["data", "cache"]),
                                    "destinationPath": st.sampled_from(["/data", "/cache", "/x/y"])})
    published = st.fixed_dictionaries({"publishedAs": st.integers(1000, 1100), "fromContainerPort": st.integers(1, 9)},
                                      optional={"protocol": st.sampled_from(["tcp", "udp"])})
    service = st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["container", "static", "generator", "command", "cron"]),
        "port": st.integers(1, 65535), "command": st.sampled_from(["./run", "./w 'a b'", "sh -c \"x\ty\"\n"]),
        "image": st.sampled_from(["default", "api"]), "volumes": st.lists(volume, max_size=2),
        "schedule": st.sampled_from(["*/5 * * * *", "@daily"]), "publicPath": st.sampled_from(["dist", "/srv/x"]),
        "publishedPorts": st.lists(published, max_size=2), "exposedInternally": st.booleans(),
        "health": st.fixed_dictionaries({"command": st.just("check --now")}), "timeout": st.integers(1, 86400),
        "x": json_values()})
    services = draw(st.dictionaries(st.sampled_from(["web", "worker", "clock", "hook:deploy:start:before"]),
                                    service, max_size=4))
    images = draw(st.dictionaries(st.sampled_from(["default", "api"]),
                                  st.fixed_dictionaries({}, optional={"dockerfile": st.just("d/Dockerfile"),
                                                                      "context": st.just("api")}), max_size=2))
    return {"version": draw(st.sampled_from(["1.0", 1, 1.0])), "services": services, "images": images}


def accepted_or_refused(text: str) -> AppConfig | None:
    try:
        return parse_disco_json(text)
    except AppConfigError as err:
        assert str(err).startswith("disco.json") and len(str(err)) < 1000
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values().map(json.dumps), st.text(max_size=60)))
def test_any_input_gives_a_config_or_a_refusal(text: str):
    accepted_or_refused(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(disco_files())
def test_what_disco_json_says_reads_back_the_same_from_the_disco_toml_config_show_prints(document: dict):
    config = accepted_or_refused(json.dumps(document))
    if config is not None:
        assert parse_app_config(render_toml(config, ("made from disco.json",))) == config
