"""The CLI's side of the API: stored logins and an HTTP client that turns errors into one line.

`disco serve` imports this module too (through cli/main.py), so httpx and tomlkit are imported
where they are used: the daemon needs neither, and they cost it ~5 MB of RSS (issue 15).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx


class ClientError(Exception):
    """One line for the terminal; the CLI exits non-zero."""


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "disco" / "config.toml"


@dataclass(frozen=True)
class Login:
    name: str
    url: str
    key: str


def save_login(login: Login, make_default: bool = True) -> Path:
    """Store a server's URL and key in ~/.config/disco/config.toml (0600), keeping comments."""
    import tomlkit  # here: see the module's docstring

    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    if "servers" not in document:
        document["servers"] = tomlkit.table()
    server = tomlkit.table()
    server["url"] = login.url
    server["key"] = login.key
    servers = document["servers"]
    if not isinstance(servers, MutableMapping):
        raise ClientError(f"{path}: `servers` must be a table of stored logins")
    servers[login.name] = server
    if make_default or "default" not in document:
        document["default"] = login.name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(tomlkit.dumps(document))
    os.chmod(path, 0o600)
    return path


def load_login(server: str | None) -> Login:
    """DISCO_URL + DISCO_API_KEY win; otherwise the named (or default) stored server."""
    url, key = os.environ.get("DISCO_URL"), os.environ.get("DISCO_API_KEY")
    if url and key:
        return Login("env", url.rstrip("/"), key)
    path = config_path()
    if not path.exists():
        raise ClientError("not logged in: run `disco login URL` (or set DISCO_URL and DISCO_API_KEY)")
    document = tomllib.loads(path.read_text())
    name = str(server or document.get("default") or "default")
    servers = document.get("servers", {})
    if name not in servers:
        known = ", ".join(sorted(servers)) or "none"
        raise ClientError(f"no stored server named {name!r} (stored: {known}); run `disco login URL --name {name}`")
    return Login(name, servers[name]["url"].rstrip("/"), key or servers[name]["key"])


class ApiClient:
    def __init__(self, login: Login, timeout: float = 60) -> None:
        import httpx  # here: see the module's docstring

        self.login = login
        self._http = httpx.Client(base_url=f"{login.url}/api/v1", timeout=timeout,
                                  headers={"Authorization": f"Bearer {login.key}"})

    def request(self, method: str, path: str, body: Any = None, params: dict | None = None,
                timeout: float | None = None) -> Any:
        import httpx  # here: see the module's docstring

        try:
            response = self._http.request(method, path, json=body, params=params,
                                          timeout=timeout if timeout is not None else self._http.timeout)
        except httpx.HTTPError as err:
            raise ClientError(f"cannot reach {self.login.url}: {err}") from None
        return self._result(response)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: _param(v) for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, timeout: float | None = None) -> Any:
        return self.request("POST", path, body if body is not None else {}, timeout=timeout)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params={k: _param(v) for k, v in params.items() if v is not None})

    def events(self, path: str, method: str = "GET", body: Any = None,
               last_event_id: str | None = None) -> Iterator[tuple[str, str, str]]:
        """Server-Sent Events as (id, event, data)."""
        import httpx  # here: see the module's docstring

        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        try:
            with self._http.stream(method, path, json=body, headers=headers, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    self._result(response)
                event_id, event = "", "message"
                data: list[str] = []
                for line in response.iter_lines():
                    if not line:
                        if data:
                            yield event_id, event, "\n".join(data)
                        event, data = "message", []
                    elif line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") or line == "data:":
                        data.append(line[6:])
        except httpx.HTTPError as err:
            raise ClientError(f"lost the connection to {self.login.url}: {err}") from None

    def lines(self, path: str, **params: Any) -> Iterator[str]:
        import httpx  # here: see the module's docstring

        try:
            with self._http.stream("GET", path, params={k: _param(v) for k, v in params.items() if v is not None},
                                   timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    self._result(response)
                yield from response.iter_lines()
        except httpx.HTTPError as err:
            raise ClientError(f"lost the connection to {self.login.url}: {err}") from None

    @staticmethod
    def _result(response: httpx.Response) -> Any:
        try:
            data = response.json()
        except json.JSONDecodeError:
            data = None
        if response.status_code >= 400:
            message = (data or {}).get("error", {}).get("message") if isinstance(data, dict) else None
            raise ClientError(message or f"HTTP {response.status_code} from the server")
        return data


def _param(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
