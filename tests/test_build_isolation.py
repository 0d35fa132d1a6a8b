"""One project cannot hurt another through its build, against a real dockerd and BuildKit: project
A's deployer cannot read project B's image (FROM, COPY --from, RUN --mount from=) nor B's build
cache. One daemon for the module; B and A's first version are deployed once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from apps import BASE, SERVE, new_version, web_app
from conftest import Disco, Key, require_docker, run, server_ref, shared_disco

SECRET = "b-secret-3f9a71"
PLANTED = "b-planted-in-cache-55c2"


def deployments(disco: Disco, project: str) -> list[dict]:
    with sqlite3.connect(disco.data_dir / "disco.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM deployments WHERE project = ? ORDER BY number", [project]).fetchall()
        return [dict(row) for row in rows]


def push(disco: Disco, key: Key, repo: Path, project: str):
    return disco.git(key, "push", disco.url(project), "main", cwd=repo, timeout=300)


class Rig:
    def __init__(self, disco: Disco, alice: Key, dave: Key, tmp: Path) -> None:
        self.disco, self.alice, self.dave, self.tmp = disco, alice, dave, tmp
        self.b_tag = ""
        self.a_repo = tmp / "a"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    tmp = tmp_path_factory.mktemp("isolation")
    for disco, alice in shared_disco(tmp):
        dave_path = tmp / "keys" / "dave"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dave@test", "-f", str(dave_path)], check=True)
        dave = Key(dave_path)
        assert disco.cli("users:add", "dave", "--role", "deployer").returncode == 0
        assert disco.cli("keys:add", "dave", str(dave.public)).returncode == 0
        r = Rig(disco, alice, dave, tmp)
        # B: a secret in its image, and something planted in a build cache of id "shared".
        b_file = [*BASE, "COPY www /www", "COPY secret.txt /secret.txt",
                  f"RUN --mount=type=cache,id=shared,target=/c echo {PLANTED} > /c/planted",
                  "EXPOSE 8000", SERVE]
        b = web_app(tmp / "b", "b\n", b_file, **{"secret.txt": SECRET + "\n"})
        result = push(disco, alice, b, "b")
        assert result.returncode == 0, result.stderr
        r.b_tag = deployments(disco, "b")[0]["image"]
        # A, which dave may push to (and only A): a first version that keeps serving.
        a = web_app(r.a_repo, "a-v1\n")
        assert push(disco, alice, a, "a").returncode == 0
        assert disco.cli("users:grant", "dave", "a").returncode == 0
        yield r


def a_push(rig: Rig, dockerfile: list[str], text: str):
    new_version(rig.a_repo, text, dockerfile)
    return push(rig.disco, rig.dave, rig.a_repo, "a")


def test_b_tag_is_not_guessable(rig: Rig):
    assert rig.b_tag.startswith(f"{rig.disco.instance}-b:1-") and len(rig.b_tag) > len(f"{rig.disco.instance}-b:1-") + 8


@pytest.mark.parametrize("how", ["from", "copy", "mount"])
def test_a_cannot_read_b_image(rig: Rig, how: str):
    tag = rig.b_tag
    lines = {
        "from": [f"FROM {tag}", "RUN /bin/busybox cat /secret.txt", SERVE],
        "copy": [*BASE, f"COPY --from={tag} /secret.txt /b.txt", "RUN /bin/busybox cat /b.txt", SERVE],
        "mount": [*BASE, f"RUN --mount=type=bind,from={tag},target=/b /bin/busybox cat /b/secret.txt", SERVE],
    }[how]
    number = 1 + next(i for i, line in enumerate(lines) if tag in line)
    before = server_ref(rig.disco, "a")
    result = a_push(rig, lines, f"a-{how}\n")
    shown = {"from": f"FROM {tag}", "copy": f"COPY --from={tag}", "mount": f"RUN --mount from={tag}"}[how]
    assert result.returncode != 0, result.stderr
    assert f"Dockerfile line {number}: {shown}: images of other projects cannot be used" in result.stderr
    assert SECRET not in result.stderr
    last = deployments(rig.disco, "a")[-1]
    assert last["status"] == "failed" and f"line {number}" in last["reason"]
    assert SECRET not in Path(last["log_path"]).read_text()
    assert "the previous version keeps serving" in result.stderr
    assert server_ref(rig.disco, "a") == before
    assert rig.disco.get("a.localhost").text == "a-v1\n"


def test_a_guessed_tag_of_b_is_refused_too(rig: Rig):
    guessed = f"{rig.disco.instance}-b:1"  # the tag deployments used to get
    result = a_push(rig, [f"FROM {guessed}", SERVE], "a-guess\n")
    assert result.returncode != 0
    assert f"Dockerfile line 1: FROM {guessed}: images of other projects cannot be used" in result.stderr


def test_a_does_not_see_b_build_cache(rig: Rig):
    lines = [*BASE, "COPY www /www",
             # BuildKit prints the command too: the quotes keep what it prints apart from what it runs.
             ("RUN --mount=type=cache,id=shared,target=/c echo list''ing: && /bin/busybox ls -la /c "
              "&& /bin/busybox cat /c/planted || echo nothing-pl''anted"),
             "EXPOSE 8000", SERVE]
    result = a_push(rig, lines, "a-cache\n")
    assert result.returncode == 0, result.stderr
    assert "listing:" in result.stderr  # the RUN ran (not from the layer cache) and printed /c
    assert PLANTED not in result.stderr and "nothing-planted" in result.stderr
    assert rig.disco.get("a.localhost").text == "a-cache\n"
