"""The Procfile (runtime/procfile.py) and how it merges with disco.toml (runtime/appconfig.py),
hostile input included: a bad line is refused naming it, before the ref moves."""

from __future__ import annotations

import random
import subprocess

import pytest

from runtime.appconfig import (
    DEFAULT_RELEASE_TIMEOUT,
    AppConfigError,
    ReleaseConfig,
    parse_app_config,
    with_procfile,
)
from runtime.appsource import config_at
from runtime.procfile import ProcfileError, parse_procfile


def test_each_line_is_a_process_type_and_release_is_the_release_command():
    parsed = parse_procfile("\ufeff# a comment\r\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\r\n\r\n"
                            "worker:python worker.py  \nrelease: ./manage.py migrate\n   clock : ./clock\n")
    assert [(p.name, p.command, p.line) for p in parsed.processes] == [
        ("web", "gunicorn app:app --bind 0.0.0.0:$PORT", 2), ("worker", "python worker.py", 4), ("clock", "./clock", 6)]
    assert parsed.release is not None and (parsed.release.command, parsed.release.line) == ("./manage.py migrate", 5)


@pytest.mark.parametrize("text, message", [
    ("web: ok\nno colon here\n", "Procfile line 2: 'no colon here' is not `<process type>: <command>`"),
    ("web:\n", "Procfile line 1: process type 'web' has no command"),
    ("web: a\nweb: b\n", "Procfile line 2: process type 'web' is already on line 1"),
    ("we b: a\n", "Procfile line 1"),
    (": a\n", "Procfile line 1"),
    ("web: a\x00b\n", "Procfile line 1: contains a NUL byte"),
    ("# nothing\n\n", "Procfile names no process type"),
    ("web: " + "x" * (70 << 10), "Procfile is larger than 64 KiB"),
])
def test_malformed_procfiles_are_refused_naming_the_line(text: str, message: str):
    with pytest.raises(ProcfileError) as refused:
        parse_procfile(text)
    assert message in str(refused.value)


def test_hostile_procfiles_raise_only_procfile_errors():
    rng = random.Random(0)
    alphabet = "web:worker release\n\r\t#:$;&|'\"\\\x00\u2028\x85é-_0123456789"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        try:
            parsed = parse_procfile(text)
        except ProcfileError:
            continue
        for process in parsed.processes:
            assert process.command and process.command == process.command.strip() and "\n" not in process.command


def test_procfile_types_become_services_keeping_what_disco_toml_sets_for_them():
    config = parse_app_config('[services.web]\nport = 5000\nhealth = "/up"\n[services.worker]\nreplicas = 3\n'
                              '[services.extra]\ncommand = "./extra"\n[release]\ntimeout = 90\n')
    merged = with_procfile(config, "web: ./web\nworker: ./work\nrelease: ./migrate\n")
    assert list(merged.services) == ["web", "worker", "extra"]
    web, worker = merged.services["web"], merged.services["worker"]
    assert (web.command, web.shell, web.port, web.health) == ("./web", True, 5000, "/up")
    assert (worker.command, worker.shell, worker.replicas) == ("./work", True, 3)
    assert merged.services["extra"].shell is False
    assert merged.release == ReleaseConfig("./migrate", shell=True, timeout=90)


def test_without_a_web_line_there_is_no_web_service():
    merged = with_procfile(parse_app_config(None), "worker: ./work\n")
    assert list(merged.services) == ["worker"]
    assert merged.release is None


@pytest.mark.parametrize("toml, procfile, message", [
    ('[services.web]\ncommand = "./a"\n', "web: ./b\n", "Procfile line 1: services.web.command is also set"),
    ('[release]\ncommand = "./a"\n', "web: ./w\nrelease: ./b\n", "Procfile line 2: [release] command is also set"),
    ("", "Web_1: ./w\n", "Procfile line 1: process type 'Web_1' must be up to 30 characters"),
    ("[release]\ntimeout = 5\n", "web: ./w\n", "[release] has no command"),
])
def test_contradictions_between_procfile_and_disco_toml_are_refused(toml: str, procfile: str, message: str):
    with pytest.raises(AppConfigError) as refused:
        with_procfile(parse_app_config(toml or None), procfile)
    assert message in str(refused.value)


def test_disco_toml_release_and_schedules():
    config = parse_app_config('[release]\ncommand = "./migrate --all"\n[services.web]\n'
                              '[services.report]\nschedule = "@daily"\ncommand = "./report"\ntimeout = 120\n')
    assert config.release == ReleaseConfig("./migrate --all", shell=False, timeout=DEFAULT_RELEASE_TIMEOUT)
    assert list(config.running_services) == ["web"] and list(config.scheduled_services) == ["report"]
    assert config.services["report"].timeout == 120


@pytest.mark.parametrize("toml, message", [
    ('[services.web]\nschedule = "@daily"\n', "disco.toml line 2: services.web serves the project's HTTP traffic"),
    ('[services.job]\nschedule = "* * *"\n', "disco.toml line 2: services.job.schedule: schedule '* * *' has 3 fields"),
    ('[services.job]\nschedule = "@reboot"\n', "services.job.schedule: schedule '@reboot'"),
    ('[services.job]\nschedule = "@daily"\nport = 80\n', "services.job.port does not apply to a scheduled service"),
    ('[services.job]\nschedule = "@daily"\nreplicas = 2\n', "services.job.replicas does not apply"),
    ('[services.job]\ntimeout = 5\n', "services.job.timeout is for scheduled services"),
    ('[services.job]\nschedule = "@daily"\ntimeout = 0\n', "services.job.timeout must be from 1 to 86400"),
    ('[release]\ncommand = "a \'b"\n', "release.command cannot be split into words"),
    ('[release]\ncommand = "x"\ntimeout = 0\n', "release.timeout must be from 1 to 86400"),
    ('[release]\ncommand = "x"\nwhen = "now"\n', "unknown key 'release.when'"),
    ('release = "x"\n', "release must be a table"),
])
def test_bad_release_and_schedule_keys_are_refused_naming_them(toml: str, message: str):
    with pytest.raises(AppConfigError) as refused:
        parse_app_config(toml)
    assert message in str(refused.value)


class Repo:
    """A git work tree whose commits config_at reads (its .git as the bare repo)."""

    def __init__(self, path) -> None:
        self.path = path
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.path), *args], check=True, capture_output=True, text=True).stdout

    def commit(self, files: dict[str, bytes]) -> str:
        for name, content in files.items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_bytes(content)
        self.git("add", "-A")
        self.git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "c")
        return self.git("rev-parse", "HEAD").strip()


def test_config_at_reads_the_procfile_at_the_build_context_root(tmp_path):
    repo = Repo(tmp_path)
    root = repo.commit({"Procfile": b"web: ./root\n", "app/Procfile": b"web: ./app\nworker: ./w\n"})
    in_context = repo.commit({"disco.toml": b'[build]\ncontext = "app"\n'})
    latin = repo.commit({"Procfile": b"web: caf\xe9\n", "disco.toml": b""})
    no_release = repo.commit({"Procfile": b"", "disco.toml": b"[release]\ntimeout = 5\n"})
    (tmp_path / "Procfile").unlink()
    no_procfile = repo.commit({})
    bare = tmp_path / ".git"
    assert config_at(bare, root).services["web"].command == "./root"
    assert list(config_at(bare, in_context).services) == ["web", "worker"]
    with pytest.raises(AppConfigError, match="^Procfile is not UTF-8 text$"):
        config_at(bare, latin)
    with pytest.raises(AppConfigError, match="Procfile names no process type"):
        config_at(bare, no_release)
    with pytest.raises(AppConfigError, match=r"\[release\] has no command"):
        config_at(bare, no_procfile)


def test_a_procfile_with_only_a_release_line_keeps_what_runs():
    # Adding a migration must not take the image's CMD (the default web) down.
    merged = with_procfile(parse_app_config(None), "release: ./migrate\n")
    assert list(merged.services) == ["web"] and merged.services["web"].command is None
    assert merged.release == ReleaseConfig("./migrate", shell=True)


def test_a_build_context_that_is_a_file_has_no_procfile(tmp_path):
    repo = Repo(tmp_path)
    # The build refuses such a context, naming it; reading the config must not crash first.
    sha = repo.commit({"ctx": b"a file, not a folder\n", "disco.toml": b'[build]\ncontext = "ctx"\n'})
    assert list(config_at(tmp_path / ".git", sha).services) == ["web"]
