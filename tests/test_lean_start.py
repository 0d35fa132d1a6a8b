"""An idle daemon loads only what idle needs (issue 15): the libraries that only some requests
use are imported by the first one that does, and stay out of an idle daemon's memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each is imported where it is used, never at a module's top in what `disco serve` loads.
LOADED_ON_FIRST_USE = {
    "httpx": "GitHub's API, the registry's HTTP API and the CLI's client (about 4 MB with rich and pygments)",
    "rich": "httpx's optional pretty printer",
    "dulwich": "the first git session or repo read",
    "tomlkit": "the first config.toml write",
    "jwt": "the first GitHub App token",
    "jinja2": "the dashboard's first page",
    "xml.etree.ElementTree": "the dashboard's first chart",
    "sqlite_utils": "a store migration (an up-to-date store never loads it: tests/test_store.py)",
    "dns.query": "the first update a deploy watches leave swarm's DNS (runtime/swarm_dns.py)",
}


def test_the_daemon_starts_without_what_only_some_requests_need():
    """The modules `disco serve` imports before it answers anything (a fresh interpreter, as the
    daemon starts): a top-level import of one of these in any of them shows up here."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, cli.main, cli.serve, api.app; print('\\n'.join(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert "api.app" in loaded and "gitserver.server" in loaded and "runtime.registry" in loaded  # it looked
    early = {name: why for name, why in LOADED_ON_FIRST_USE.items() if name in loaded}
    assert not early, f"imported at start, though only needed for: {early}"
