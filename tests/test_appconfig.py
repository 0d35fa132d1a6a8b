"""disco.toml: defaults, every key, and errors that name the key and the line."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from runtime.appconfig import (
    AppConfigError,
    BuildConfig,
    Caps,
    Limits,
    PublishedPort,
    ServiceConfig,
    Volume,
    check_caps,
    memory_bytes,
    parse_app_config,
)


def test_no_file_means_one_web_service():
    config = parse_app_config(None)
    assert list(config.services) == ["web"]
    assert config.services["web"] == ServiceConfig("web")
    assert config.build.dockerfile == "Dockerfile"


def test_full_example_file_parses():
    from pathlib import Path
    text = (Path(__file__).parent.parent / "disco.toml.example").read_text()
    config = parse_app_config(text)
    web = config.services["web"]
    assert web.port == 8000 and web.health == "/healthz" and web.volumes == (Volume("data", "/data"),)
    assert "worker" in config.services and config.services["worker"].port is None


def test_every_key():
    config = parse_app_config(
        """
[build]
dockerfile = "docker/Dockerfile.prod"
context = "app"
args = { APP_ENV = "prod", DEBUG = false, LEVEL = 3 }

[services.web]
port = 5000
command = "./server --fast"
replicas = 2
health = "/up"
health_timeout = 20
volumes = ["data:/var/data", "cache:/cache"]

[services.worker]
command = "./worker"
"""
    )
    assert config.build.args == {"APP_ENV": "prod", "DEBUG": "false", "LEVEL": "3"}
    assert config.build.dockerfile == "docker/Dockerfile.prod" and config.build.context == "app"
    web = config.services["web"]
    assert (web.port, web.command, web.replicas, web.health, web.health_timeout) == (5000, "./server --fast", 2, "/up", 20)
    assert web.volumes == (Volume("data", "/var/data"), Volume("cache", "/cache"))
    assert config.services["worker"].command == "./worker"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[services.web]\nprot = 80\n", "disco.toml line 2: unknown key 'services.web.prot'"),
        ("\n\n[build]\ndockerfile = 'D'\nkontext = '.'\n", "disco.toml line 5: unknown key 'build.kontext'"),
        ("colour = 1\n", "disco.toml line 1: unknown key 'colour'"),
        ("[services.web]\nport = 'eighty'\n", "disco.toml line 2: services.web.port must be an integer, got str 'eighty'"),
        ("[services.web]\nport = true\n", "services.web.port must be an integer, got bool"),
        ("[services.web]\nport = 70000\n", "disco.toml line 2: services.web.port must be from 1 to 65535"),
        ("[services.web]\nreplicas = -1\n", "replicas must be from 0 to 100"),
        ("[services.web]\nhealth = 'healthz'\n", "health must be a URL path like '/healthz'"),
        ("[services.web]\nvolumes = ['data']\n", "volumes entries look like \"name:/mount/path\""),
        ("[services.web]\nvolumes = ['data:relative']\n", "mount path 'relative' must be an absolute path"),
        ("[services.web]\nvolumes = ['../x:/x']\n", "volume name '../x' must be"),
        ("[services.Web]\nport = 1\n", "disco.toml line 1: service name 'Web' is invalid"),
        ("[build]\ncontext = '../outside'\n", "disco.toml line 2: build.context must be a relative path inside the repo"),
        ("[build]\ndockerfile = '/etc/passwd'\n", "build.dockerfile must be a relative path inside the repo"),
        ("[build]\nargs = { A = [1] }\n", "build.args.A must be a string"),
        ("services = 3\n", "disco.toml line 1: services must be a table"),
        ("[services]\n", "[services] is empty"),
        ("[services.web\nport = 1\n", "disco.toml is not valid TOML"),
        ("[services.web]\nport = 1\nport = 2\n", "line 3"),
        ("[services.web]\ncommand = \"sh -c 'unclosed\"\n", "disco.toml line 2: services.web.command cannot be split"),
        ("[services.web]\nmemory = 'lots'\n", "disco.toml line 2: services.web.memory 'lots' must look like 256M or 1G"),
        ("[services.web]\nmemory = '1k'\n", "below Docker's minimum of 6M"),
        ("[services.web]\ncpus = 0\n", "disco.toml line 2: services.web.cpus must be from 0.01 to 1024"),
        ("[services.web]\ncpus = '2'\n", "services.web.cpus must be a number, got str"),
        ("[services.web]\npids = 3\n", "services.web.pids must be from 16 to 1000000"),
        ("[services.web]\nport = " + "[" * 5000 + "]" * 5000 + "\n", "nests arrays or tables too deeply"),
        ("x = '" + "a" * (300 << 10) + "'\n", "disco.toml is larger than 256 KiB"),
    ],
)
def test_errors_name_key_and_line(text: str, message: str):
    with pytest.raises(AppConfigError) as caught:
        parse_app_config(text)
    assert message in str(caught.value)


def test_config_at_reads_the_commit_and_refuses_non_utf8(tmp_path):
    import subprocess

    from runtime.appsource import config_at

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q", "-b", "main")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "no toml")
    without = git("rev-parse", "HEAD").strip()
    (tmp_path / "disco.toml").write_bytes(b"[services.web]\ncommand = \"caf\xe9\"\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "latin-1")
    latin = git("rev-parse", "HEAD").strip()
    (tmp_path / "disco.toml").write_text("[services.worker]\ncommand = \"run\"\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "worker")
    worker = git("rev-parse", "HEAD").strip()
    repo = tmp_path / ".git"
    assert list(config_at(repo, without).services) == ["web"]
    assert list(config_at(repo, worker).services) == ["worker"]
    with pytest.raises(AppConfigError, match="^disco.toml is not UTF-8 text$"):
        config_at(repo, latin)


def test_limits_and_the_servers_caps():
    config = parse_app_config('[services.web]\nmemory = "1GiB"\ncpus = 2\npids = 64\n[services.worker]\nreplicas = 3\n')
    assert config.services["web"].limits == Limits(memory="1GiB", cpus=2.0, pids=64)
    assert config.services["worker"].limits == Limits()
    assert [memory_bytes(text) for text in ("256M", "256m", "1G", "1GiB", "6291456")] == [
        256 << 20, 256 << 20, 1 << 30, 1 << 30, 6 << 20]
    roomy = Caps(services=2, replicas=3, memory_bytes=1 << 30, pids=64)
    check_caps(config, roomy)
    with pytest.raises(AppConfigError, match="defines 2 services; this server allows 1 per project"):
        check_caps(config, replace(roomy, services=1))
    with pytest.raises(AppConfigError, match="services.worker.replicas is 3; this server allows 2 per service"):
        check_caps(config, replace(roomy, replicas=2))
    with pytest.raises(AppConfigError, match="services.web.memory is 1GiB; this server allows 512M per task"):
        check_caps(config, replace(roomy, memory_bytes=512 << 20))
    with pytest.raises(AppConfigError, match="services.web.pids is 64; this server allows 32 per task"):
        check_caps(config, replace(roomy, pids=32))


# -- the app model of issue 12: images, static sites, health commands, published ports, internal

def test_images_and_the_services_that_run_them():
    config = parse_app_config('''
[build]
dockerfile = "web.Dockerfile"
[images.tools]
dockerfile = "tools/Dockerfile"
context = "tools"
args = { LEVEL = 2 }
[services.web]
[services.worker]
image = "tools"
command = "./work"
''')
    assert config.services["worker"].image == "tools" and config.services["web"].image == "default"
    assert list(config.images_to_build) == ["default", "tools"]
    assert config.image("tools") == BuildConfig("tools/Dockerfile", "tools", {"LEVEL": "2"})
    assert config.image("default").dockerfile == "web.Dockerfile"


@pytest.mark.parametrize("text, message", [
    ('[services.web]\nimage = "tools"\n', "services.web.image 'tools' is not an image of the app (images: default; "
                                          "declare it as [images.tools])"),
    ('[images.default]\ndockerfile = "x"\n', "[images.default] is the image [build] describes"),
    ('[images.Tools]\n', "image name 'Tools' is invalid"),
    ('[images.tools]\ncontext = "../up"\n', "images.tools.context must be a relative path inside the repo"),
    ('[images.tools]\nfile = "x"\n', "unknown key 'images.tools.file'"),
])
def test_image_errors_name_the_key(text: str, message: str):
    with pytest.raises(AppConfigError, match=re.escape(message)):
        parse_app_config(text)


def test_a_static_site_runs_no_container_and_may_need_no_image():
    from_image = parse_app_config('[services.web]\nstatic = "dist"\n')
    assert from_image.static_site == ServiceConfig("web", static="dist")
    assert from_image.running_services == {} and list(from_image.images_to_build) == ["default"]
    from_repo = parse_app_config('[services.web]\nstatic = "public/site"\nstatic_source = "repo"\n')
    assert from_repo.static_site is not None and from_repo.images_to_build == {}


@pytest.mark.parametrize("text, message", [
    ('[services.web]\nstatic = "dist"\nport = 80\n', "services.web.port does not apply to a static site"),
    ('[services.web]\nstatic = "../etc"\n', "services.web.static must be a folder like \"dist\""),
    ('[services.web]\nstatic = "/srv/x"\nstatic_source = "repo"\n', "relative to the repo root"),
    ('[services.web]\nstatic = "dist"\nstatic_source = "git"\n', "static_source must be \"image\""),
    ('[services.web]\nstatic_source = "repo"\n', "static_source needs static"),
    ('[services.api]\nstatic = "dist"\n', "only the web service can be a static site"),
])
def test_static_site_errors(text: str, message: str):
    with pytest.raises(AppConfigError, match=re.escape(message)):
        parse_app_config(text)


def test_health_command_published_ports_and_internal():
    config = parse_app_config('''
[services.web]
[services.db]
health = { command = "pg_isready -U app" }
publish = ["5432:5432", "6000:53/udp"]
internal = true
''')
    db = config.services["db"]
    assert db.health is None and db.health_command == "pg_isready -U app"
    assert db.publish == (PublishedPort(5432, 5432, "tcp"), PublishedPort(6000, 53, "udp"))
    assert str(db.publish[1]) == "6000:53/udp" and db.internal and not config.services["web"].internal


@pytest.mark.parametrize("text, message", [
    ('[services.db]\npublish = ["80:80"]\n', "host port 80 must be from 1024 to 65535"),
    ('[services.db]\npublish = ["5432"]\n', "publish entries look like \"5432:5432/tcp\""),
    ('[services.db]\npublish = ["5432:5432/sctp"]\n', "publish entries look like"),
    ('[services.db]\npublish = ["5432:0"]\n', "container port 0 must be from 1 to 65535"),
    ('[services.a]\npublish = ["7000:1"]\n[services.b]\npublish = ["7000:2"]\n',
     "port 7000/tcp is already published by services.a"),
    ('[services.db]\ninternal = "yes"\n', "services.db.internal must be true or false"),
    ('[services.db]\nhealth = { cmd = "x" }\n', "unknown key 'services.db.health.cmd'"),
    ('[services.db]\nhealth = {}\n', "services.db.health needs a command"),
    ('[services.db]\nhealth = 3\n', "services.db.health must be a string or a table"),
    ('[services.db]\nschedule = "@daily"\npublish = ["7000:1"]\n', "publish does not apply to a scheduled service"),
])
def test_health_publish_and_internal_errors(text: str, message: str):
    with pytest.raises(AppConfigError, match=re.escape(message)):
        parse_app_config(text)
