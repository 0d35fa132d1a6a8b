"""Where an app's configuration comes from at a commit: `disco.toml`, else `disco.json` (the file
of the system Disco is modelled on), merged with the `Procfile` at the build context's root.

Both files present: disco.toml wins, and the config's notes say that disco.json was ignored,
so the deployment output says it rather than leaving the reader to guess.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from runtime import gitrepo
from runtime.appconfig import AppConfig, AppConfigError, parse_app_config, with_procfile
from runtime.discojson import parse_disco_json

TOML, JSON = "disco.toml", "disco.json"


def file_config_at(repo: Path, sha: str) -> AppConfig:
    """The configuration the commit's own file says (disco.toml, else disco.json, else the
    default: one `web` service), before the Procfile: what `disco config:show` prints."""
    toml = _text_at(repo, sha, TOML)
    if toml is not None:
        config = parse_app_config(toml)
        if gitrepo.read_file(repo, sha, JSON) is not None:
            config = replace(config, notes=(f"{JSON} ignored: {TOML} is read when a repo has both",))
        return config
    json = _text_at(repo, sha, JSON)
    if json is None:
        return parse_app_config(None)
    return replace(parse_disco_json(json), notes=(f"read {JSON} (there is no {TOML}); "
                                                  f"`disco config:show` prints it as {TOML}",))


def config_at(repo: Path, sha: str) -> AppConfig:
    """The app's configuration at that commit of a bare repo: its disco.toml (or disco.json) and
    its Procfile, merged (the default, one `web` service, when it has none of them)."""
    config = file_config_at(repo, sha)
    procfile = _text_at(repo, sha, config.procfile_path)
    if procfile is not None:
        return with_procfile(config, procfile)
    if config.release is not None and not config.release.command:
        raise AppConfigError("disco.toml: [release] has no command (and there is no Procfile with a release line)")
    return config


def _text_at(repo: Path, sha: str, path: str) -> str | None:
    raw = gitrepo.read_file(repo, sha, path)
    try:
        return raw.decode() if raw is not None else None
    except UnicodeDecodeError:
        raise AppConfigError(f"{path} is not UTF-8 text") from None
