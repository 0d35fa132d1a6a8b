"""Server settings: flag, then DISCO_<NAME>, then config.toml, then the default."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataclasses import fields

from runtime.settings import Settings, help_of, resolve_settings, settings_table, write_default_config


def test_precedence_flag_env_config_default(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text("ssh_port = 2300\napi_port = 8900\ninstance = \"fromfile\"\n")
    env = {"DISCO_DATA_DIR": str(data), "DISCO_API_PORT": "9000", "DISCO_INSTANCE": "fromenv"}
    settings = resolve_settings({"instance": "fromflag"}, env)
    assert settings.data_dir == data
    assert settings.instance == "fromflag"
    assert settings.api_port == 9000
    assert settings.ssh_port == 2300
    assert settings.max_push_size == 1 << 30


def test_defaults(tmp_path: Path):
    settings = resolve_settings({"data_dir": str(tmp_path)}, {})
    assert (settings.ssh_port, settings.api_port, settings.instance) == (2222, 8800, "disco")
    assert resolve_settings({}, {}).data_dir == Path("/var/lib/disco")


def test_config_errors_name_the_problem(tmp_path: Path):
    (tmp_path / "config.toml").write_text("ssh_prot = 22\n")
    with pytest.raises(ValueError, match="unknown setting 'ssh_prot'"):
        resolve_settings({"data_dir": str(tmp_path)}, {})
    (tmp_path / "config.toml").write_text("ssh_port = \n")
    with pytest.raises(ValueError, match="config.toml"):
        resolve_settings({"data_dir": str(tmp_path)}, {})
    (tmp_path / "config.toml").write_text("")
    with pytest.raises(ValueError, match="ssh_port must be a whole number, got 'abc'"):
        resolve_settings({"data_dir": str(tmp_path)}, {"DISCO_SSH_PORT": "abc"})


def test_written_config_holds_the_defaults_not_this_runs_flags(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, ssh_port=2022, instance="blue", tls=False)
    assert write_default_config(settings)
    assert not write_default_config(settings)
    assert resolve_settings({"data_dir": str(tmp_path)}, {}) == Settings(data_dir=tmp_path)
    text = (tmp_path / "config.toml").read_text()
    assert "tls = true" in text and "# automatic HTTPS" in text


def test_booleans_and_instance_names(tmp_path: Path):
    assert resolve_settings({"data_dir": str(tmp_path)}, {"DISCO_TLS": "false"}).tls is False
    assert resolve_settings({"data_dir": str(tmp_path), "tls": True}, {"DISCO_TLS": "0"}).tls is True
    with pytest.raises(ValueError, match="tls must be true or false"):
        resolve_settings({"data_dir": str(tmp_path)}, {"DISCO_TLS": "maybe"})
    with pytest.raises(ValueError, match="instance 'Bad_Name' must be"):
        resolve_settings({"data_dir": str(tmp_path), "instance": "Bad_Name"}, {})


def test_readme_settings_table_is_the_declared_one():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    marker = "<!-- settings-table: made from runtime/settings.py; tests/test_settings.py fails when it drifts -->\n"
    assert marker in readme
    table = readme.split(marker, 1)[1].split("\n\n", 1)[0] + "\n"
    assert table == settings_table(), "README's settings table drifted: paste runtime.settings.settings_table()"


def test_every_setting_is_a_serve_flag_and_an_env_var(tmp_path: Path):
    from cli.main import build_parser

    args = build_parser().parse_args(["serve", "--listen", "127.0.0.9", "--no-tls", "--keep-images", "3",
                                      "--data-dir", str(tmp_path)])
    assert (args.listen, args.tls, args.keep_images) == ("127.0.0.9", False, 3)
    serve_flags = {action.dest for action in build_parser()._subparsers._group_actions[0].choices["serve"]._actions}
    assert {f.name for f in fields(Settings)} <= serve_flags
    assert resolve_settings({"data_dir": str(tmp_path)}, {"DISCO_LISTEN": "10.0.0.1"}).listen == "10.0.0.1"
    write_default_config(Settings(data_dir=tmp_path))
    config = (tmp_path / "config.toml").read_text()
    for f in fields(Settings):
        if f.name != "data_dir":
            assert f"# {help_of(f.name)}\n{f.name} = " in config


def test_limits_settings_are_checked(tmp_path: Path):
    with pytest.raises(ValueError, match="default_memory: memory 'lots' must look like 256M or 1G"):
        resolve_settings({"data_dir": str(tmp_path), "default_memory": "lots"}, {})
    with pytest.raises(ValueError, match="default_cpus must be a number of CPUs"):
        resolve_settings({"data_dir": str(tmp_path)}, {"DISCO_DEFAULT_CPUS": "many"})
    with pytest.raises(ValueError, match="max_replicas must be at least 1"):
        resolve_settings({"data_dir": str(tmp_path), "max_replicas": 0}, {})


def test_the_health_interval_is_whole_seconds_from_1_to_30(tmp_path: Path):
    assert resolve_settings({"data_dir": str(tmp_path)}, {}).health_interval == 1  # Docker's checks as before
    assert resolve_settings({"data_dir": str(tmp_path)}, {"DISCO_HEALTH_INTERVAL": "10"}).health_interval == 10
    for wrong in ("0", "31", "-5"):
        with pytest.raises(ValueError, match=f"health_interval must be from 1 to 30 seconds, got {wrong}"):
            resolve_settings({"data_dir": str(tmp_path)}, {"DISCO_HEALTH_INTERVAL": wrong})
    with pytest.raises(ValueError, match="health_interval"):
        resolve_settings({"data_dir": str(tmp_path)}, {"DISCO_HEALTH_INTERVAL": "1.5"})
