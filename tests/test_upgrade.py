"""An upgrade keeps what runs: deployments made by the version before collision-free names
(runtime/names.py) keep serving through the restart, and the next deploy moves a project with
a '-' in its name to the new service name with zero failed requests, its volume and its
rollback images kept.

The old version is the real one: its code, from git history, runs as the daemon first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from apps import BASE, new_version, shell_cmd, web_app
from conftest import CADDY_IMAGE, Disco, Key, Poller, require_docker, run
from hooks import apikeys
from runtime.store import Store

ROOT = Path(__file__).parent.parent
LAST_WITH_OLD_NAMES = "24629fa8d6882fc6a786e70cebbf8fa65fc96bfc"
# Writes when the volume was first used, and shows it, so a new empty volume would show.
APP = [*BASE, "COPY www /www", "EXPOSE 8000",
       shell_cmd("[ -f /data/born ] || /bin/busybox date +%s%N > /data/born; "
                 "/bin/busybox cp /data/born /www/born; exec /bin/busybox httpd -f -p 8000 -h /www")]
TOML = '[services.web]\nvolumes = ["app-data:/data"]\n'


def old_version(into: Path) -> Path:
    """The code of the last version with the old names, extracted from the repo's history."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", LAST_WITH_OLD_NAMES], capture_output=True)
    if archive.returncode != 0:
        pytest.fail(f"commit {LAST_WITH_OLD_NAMES[:7]} is not in this clone's history: {archive.stderr.decode()}")
    into.mkdir()
    (into / "old.tar").write_bytes(archive.stdout)
    with tarfile.open(into / "old.tar") as tar:
        tar.extractall(into, filter="data")
    return into


def old_disco(*args: str) -> list[str]:
    """The old `disco` command; run with PYTHONPATH=<its code>, whose packages then come
    before this checkout's (the editable install's finder is consulted last)."""
    return [sys.executable, "-c", "import sys; from api.cli import main; sys.exit(main())", *args]


def services_of(disco: Disco) -> set[str]:
    out = run(["/usr/bin/docker", "service", "ls", "--format", "{{.Name}}",
               "--filter", f"label=disco.instance={disco.instance}"], check=True).stdout
    return set(out.split())


def volumes_of(disco: Disco) -> set[str]:
    out = run(["/usr/bin/docker", "volume", "ls", "--format", "{{.Name}}",
               "--filter", f"label=disco.instance={disco.instance}"], check=True).stdout
    return set(out.split())


@pytest.fixture
def fresh(tmp_path: Path):
    """A data dir that only the old version has touched yet."""
    server = Disco(data_dir=tmp_path / "data", workdir=tmp_path)
    yield server
    if server.process is not None:
        server.stop(signal.SIGKILL)
    server.remove_docker_objects()


def test_an_upgrade_keeps_serving_and_the_next_deploy_moves_to_the_new_names(fresh: Disco, make_key,
                                                                             tmp_path: Path):
    require_docker()
    disco = fresh
    code = old_version(tmp_path / "old")
    key: Key = make_key("alice")
    old_env = {**os.environ, "PYTHONPATH": str(code)}
    old = subprocess.run(old_disco("init", "--data-dir", str(disco.data_dir), "--admin", "alice",
                                   "--key", str(key.public)), env=old_env, cwd=code, capture_output=True, text=True)
    assert old.returncode == 0, old.stderr

    # The old daemon deploys my-app: service, volume and image under the old names.
    log = (tmp_path / "old-serve.log").open("w")
    old_daemon = subprocess.Popen(old_disco("serve", "--data-dir", str(disco.data_dir),
                                            "--ssh-port", str(disco.ssh_port), "--listen", "127.0.0.1",
                                            "--instance", disco.instance, "--http-port", str(disco.http_port),
                                            "--https-port", str(disco.https_port), "--api-port", str(disco.api_port),
                                            "--no-tls", "--apps-domain", "localhost", "--caddy-image", CADDY_IMAGE),
                                  env=old_env, cwd=code, stdout=log, stderr=subprocess.STDOUT)
    try:
        repo = web_app(tmp_path / "app", "v1\n", APP, **{"disco.toml": TOML})
        deadline = time.monotonic() + 30
        while (pushed := disco.git(key, "push", disco.url("my-app"), "main", cwd=repo, timeout=300)).returncode:
            assert time.monotonic() < deadline, pushed.stderr  # the old daemon is still starting
            time.sleep(0.5)
    finally:
        old_daemon.terminate()
        assert old_daemon.wait(30) == 0
    legacy = f"{disco.instance}-my-app-web"
    assert services_of(disco) >= {legacy}
    born = disco.get("my-app.localhost", "/born").text
    assert disco.get("my-app.localhost").text == "v1\n"

    with Poller(disco, "my-app.localhost", keep_alive=False) as during:
        # The new daemon takes over the same data dir and Docker objects: nothing moves yet.
        disco.start()
        disco.wait_for_proxy()
        assert disco.get("my-app.localhost").text == "v1\n"
        assert legacy in services_of(disco)

        # Its first deploy starts the service under its new name beside the old, then retires the old.
        new_version(repo, "v2\n", APP, **{"disco.toml": TOML})
        second = disco.git(key, "push", disco.url("my-app"), "main", cwd=repo, timeout=300)
        assert second.returncode == 0, second.stderr
        disco.api_key = api_key(disco)  # the old version's init made none for this test's calls
        disco.cleaned_up("my-app")  # the push returned once live; retiring the old service goes on
        time.sleep(1)
    assert during.errors == [] and len(during.bodies) > 20, (during.errors, len(during.bodies))
    current = f"{disco.instance}-my--app-web"
    assert current in services_of(disco) and legacy not in services_of(disco)
    assert disco.get("my-app.localhost").text == "v2\n"
    # The volume holds data: the one made under the old name is the one still mounted.
    assert disco.get("my-app.localhost", "/born").text == born
    assert volumes_of(disco) == {f"{disco.instance}-my-app-app-data"}

    # The image the old version built is kept for rollback, and still rolls back.
    headers = {"Authorization": f"Bearer {disco.api_key}"}
    back = httpx.post(f"http://127.0.0.1:{disco.api_port}/api/v1/projects/my-app/rollback", json={"number": 1},
                      headers=headers, timeout=30)
    assert back.status_code == 202, back.text
    deadline = time.monotonic() + 120
    while disco.get("my-app.localhost").text != "v1\n":
        assert time.monotonic() < deadline, "the rollback to the old version's image did not go live"
        time.sleep(0.5)
    assert disco.get("my-app.localhost", "/born").text == born


def api_key(disco: Disco) -> str:
    store = Store(disco.data_dir / "disco.sqlite3")
    try:
        return apikeys.create(store, "test", "alice", "upgrade-test")[1]
    finally:
        store.close()
