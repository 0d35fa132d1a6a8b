"""No one can starve the server, against one real `disco serve` daemon for the module: an
unproven webhook flood costs no memory, and log followers hold no thread of the API's pool."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from apps import BASE, shell_cmd, web_app
from conftest import Disco, Key, require_docker, run

from hooks import github

MB = 1 << 20


def unnamed_unix_sockets(disco: Disco) -> int:
    """The daemon's unix sockets without a path: its connections to Docker's socket."""
    assert disco.process is not None
    mine = set()
    for fd in Path(f"/proc/{disco.process.pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[6] in mine and len(parts) == 7:  # no path column
            count += 1
    return count


def proc_status(disco: Disco) -> dict[str, int]:
    """The daemon's VmRSS and VmHWM (kB) and its thread count, from /proc."""
    assert disco.process is not None
    fields = {}
    for line in Path(f"/proc/{disco.process.pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            fields[name] = int(value.split()[0])
    return fields


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    tmp = tmp_path_factory.mktemp("limits")
    server = Disco(data_dir=tmp / "data", workdir=tmp)
    result = server.cli("init", "--admin", "alice")
    assert result.returncode == 0, result.stderr
    server.api_key = result.stdout.split("(shown once, store it now): ")[1].split()[0]
    key = Key(tmp / "alice")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key.path)], check=True)
    assert server.cli("init", "--admin", "alice", "--key", str(key.public)).returncode == 0
    server.start()
    try:
        yield server, key
    finally:
        if server.process is not None:
            server.stop()
        server.remove_docker_objects()


def api(disco: Disco, method: str, path: str, body: dict | None = None, key: str | None = None) -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{disco.api_port}/api/v1{path}", json=body,
                         headers={"Authorization": f"Bearer {key or disco.api_key}"}, timeout=30)


# -- 1. webhooks cost nothing until proven -----------------------------------------------------

def test_a_flood_of_unproven_webhooks_leaves_memory_flat(daemon):
    disco, _ = daemon
    assert api(disco, "POST", "/projects", {"name": "hooked"}).status_code == 201
    assert api(disco, "POST", "/projects/hooked/github", {"repo": "octo/hooked"}).status_code == 201
    body = b"x" * github.MAX_BODY  # as large as GitHub sends
    base = f"http://127.0.0.1:{disco.api_port}/webhooks/github"
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1",
               "X-Hub-Signature-256": "sha256=" + "0" * 64}

    def post(url: str) -> int:
        with httpx.Client(timeout=60) as client:
            return client.post(url, content=body, headers=headers).status_code

    api(disco, "GET", "/meta")  # warm up: the first request loads what every later one uses
    before = proc_status(disco)
    with ThreadPoolExecutor(40) as pool:
        nowhere = list(pool.map(post, [f"{base}/ghost"] * 40))
        wrong = list(pool.map(post, [f"{base}/hooked"] * 40))
    after = proc_status(disco)
    print(f"webhook flood: VmRSS {before['VmRSS'] // 1024} -> {after['VmRSS'] // 1024} MB, "
          f"VmHWM {before['VmHWM'] // 1024} -> {after['VmHWM'] // 1024} MB; wrong-signature statuses {sorted(wrong)}")
    assert nowhere == [404] * 40
    assert set(wrong) <= {401, 503} and 401 in wrong, wrong  # read a few at a time, the rest refused unread
    assert after["VmHWM"] - before["VmHWM"] < 100 * 1024, (before, after)
    # Still answering, and a proven delivery still gets through.
    assert api(disco, "GET", "/meta").status_code == 200


# -- 2. the API cannot be starved ---------------------------------------------------------------

@pytest.fixture(scope="module")
def live_app(daemon, tmp_path_factory: pytest.TempPathFactory):
    disco, key = daemon
    app = [*BASE, "COPY www /www", "EXPOSE 8000",
           shell_cmd("echo app-started; exec /bin/busybox httpd -f -p 8000 -h /www")]
    repo = web_app(tmp_path_factory.mktemp("app") / "shop", "v1\n", app)
    pushed = disco.git(key, "push", disco.url("shop"), "main", cwd=repo, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    keys = {}
    for index in range(5):
        user = f"dep{index}"
        assert api(disco, "POST", "/users", {"name": user, "role": "deployer"}).status_code == 201
        assert api(disco, "POST", f"/users/{user}/grants", {"project": "shop"}).status_code == 201
        created = api(disco, "POST", "/api-keys", {"label": "followers", "user": user})
        assert created.status_code == 201, created.text
        keys[user] = created.json()["key"]
    # The app has logged its first line before anyone follows it.
    deadline = time.monotonic() + 60
    while "app-started" not in api(disco, "GET", "/projects/shop/logs?tail=5").text:
        assert time.monotonic() < deadline, "the app never logged"
        time.sleep(0.2)
    return disco, keys


async def follow(client: httpx.AsyncClient, key: str, held: list, refused: list) -> None:
    """One `logs --follow`, reading for as long as it runs (the test cancels it: the client
    goes away), or recorded as refused. Held once its first line has come."""
    async with client.stream("GET", "/api/v1/projects/shop/logs", params={"follow": "true", "tail": "1"},
                             headers={"Authorization": f"Bearer {key}"}) as response:
        if response.status_code != 200:
            refused.append((response.status_code, (await response.aread()).decode()))
            return
        # Never leave this loop early: an abandoned line iterator closes the connection.
        async for line in response.aiter_lines():
            if "app-started" in line and response not in held:
                held.append(response)


async def meta_p99(disco: Disco, count: int = 200) -> float:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{disco.api_port}", timeout=30,
                                 headers={"Authorization": f"Bearer {disco.api_key}"}) as client:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            response = await client.get("/api/v1/meta")
            times.append(time.perf_counter() - started)
            assert response.status_code == 200
    return statistics.quantiles(times, n=100)[98]


def test_a_hundred_followers_do_not_starve_the_api(live_app):
    disco, keys = live_app

    held_sockets: list[int] = []

    async def scenario() -> None:
        quiet = await meta_p99(disco)
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{disco.api_port}", timeout=60,
                                     limits=limits) as client:
            held: list = []
            refused: list = []
            # 5 deployers × 20 followers: 10 each held (50 in all, more than the 40 threads of
            # the shared pool), the other 10 each refused.
            tasks = [asyncio.create_task(follow(client, key, held, refused))
                     for key in keys.values() for _ in range(20)]
            deadline = time.monotonic() + 60
            while len(held) + len(refused) < 100:
                assert time.monotonic() < deadline, (len(held), refused[:3])
                assert not any(t.done() and t.exception() for t in tasks), [t.exception() for t in tasks if t.done()]
                await asyncio.sleep(0.05)
            assert len(held) == 50, (len(held), refused[:3])
            assert len(refused) == 50 and all(status == 429 for status, _ in refused), refused[:3]
            assert '"code":"too_many_streams"' in refused[0][1] and "10 streams open" in refused[0][1]
            p99 = await meta_p99(disco)
            # No follower holds a thread of the shared pool (40): 45 calls that each need one
            # (/meta asks Docker in a worker thread) all answer together.
            burst = await asyncio.gather(*[client.get("/api/v1/meta", headers={"Authorization": f"Bearer {disco.api_key}"})
                                           for _ in range(45)])
            print(f"50 followers held, 50 refused; /meta p99 {p99 * 1000:.1f} ms (alone: {quiet * 1000:.1f} ms)")
            assert p99 < 0.1, p99
            assert [r.status_code for r in burst] == [200] * 45
            held_sockets.append(unnamed_unix_sockets(disco))  # 50 of them are the followers' Docker streams
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # The clients are gone: the same deployer opens a stream again at once.
            again: list = []
            refused.clear()
            started = time.monotonic()
            while not again:
                assert time.monotonic() - started < 5, refused[-1:]
                reopened = asyncio.create_task(follow(client, keys["dep0"], again, refused))
                while not reopened.done() and not again:
                    await asyncio.sleep(0.01)
                reopened.cancel()
                await asyncio.gather(reopened, return_exceptions=True)
            print(f"a stream opened again {1000 * (time.monotonic() - started):.0f} ms after the clients left")

    asyncio.run(scenario())
    # Every follower's Docker stream was closed when its client went, not left for Docker to end.
    deadline = time.monotonic() + 5
    while unnamed_unix_sockets(disco) > held_sockets[0] - 50:
        assert time.monotonic() < deadline, (held_sockets, unnamed_unix_sockets(disco))
        time.sleep(0.05)


def test_run_streams_its_output_and_counts_as_a_stream(live_app):
    disco, keys = live_app
    ran = api(disco, "POST", "/projects/shop/run", {"command": ["/bin/busybox", "sh", "-c", "echo one; exit 3"]},
              key=keys["dep1"])
    assert ran.status_code == 200 and "data: one" in ran.text and '"exit_code": 3' in ran.text
    instance = disco.instance
    left = subprocess.run(["/usr/bin/docker", "ps", "-aq", "--filter", f"label=disco.instance={instance}",
                           "--filter", "label=disco.role=run"], capture_output=True, text=True, check=True).stdout.split()
    assert left == []
