"""Static sites served by Caddy itself, and apps that build several images, on one real daemon.

A static site is a folder copied out of the built image (or taken from the commit), complete
before its `live` link switches to it: no container of it runs, and requests under keep-alive
load never fail across deploys and a rollback.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from apps import BASE, BUSYBOX, SERVE
from conftest import Disco, Key, Poller, commit, make_repo, require_docker, run, server_ref, shared_disco, wait_for

SITE_DOCKERFILE = "FROM scratch\nCOPY site /app/site\nWORKDIR /app\n"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    yield from shared_disco(tmp_path_factory.mktemp("static"))


def push(disco: Disco, key: Key, repo: Path, project: str) -> subprocess.CompletedProcess:
    return disco.git(key, "push", disco.url(project), "main", cwd=repo, timeout=300)


def served(disco: Disco, project: str, path: str = "/") -> str:
    response = disco.get(f"{project}.localhost", path)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.text


def site_files(text: str) -> dict[str, str | bytes]:
    return {"Dockerfile": SITE_DOCKERFILE, "disco.toml": '[services.web]\nstatic = "site"\n',
            "site/index.html": text, "site/css/app.css": f"/* {text.strip()} */\n"}


def test_a_static_site_from_the_image_switches_with_no_failed_request_and_rolls_back(rig, tmp_path: Path):
    disco, alice = rig
    repo = make_repo(tmp_path / "site", site_files("v1\n"), message="v1")
    first = push(disco, alice, repo, "site")
    assert first.returncode == 0, first.stderr
    assert "static site: 2 file(s) from site of the image" in first.stderr
    assert served(disco, "site") == "v1\n" and served(disco, "site", "/css/app.css") == "/* v1 */\n"
    services = run(["/usr/bin/docker", "service", "ls", "-q", "--filter", "label=disco.project=site",
                    "--filter", f"label=disco.instance={disco.instance}"]).stdout.split()
    assert services == [], "a static site runs no container"

    with Poller(disco, host="site.localhost") as poller:
        for version in ("v2\n", "v3\n"):
            commit(repo, site_files(version), version.strip())
            result = push(disco, alice, repo, "site")
            assert result.returncode == 0, result.stderr
            wait_for(f"{version.strip()} to serve", lambda v=version: served(disco, "site") == v, 10)
        rolled = disco.api("POST", "/projects/site/rollback", {})
        assert rolled.is_success, rolled.text
        record = disco.finished_deployment("site", rolled.json()["number"])
        assert record["status"] == "live", record
        assert served(disco, "site") == "v2\n"
    assert poller.errors == [], poller.errors[:5]
    assert set(poller.bodies) <= {"v1\n", "v2\n", "v3\n"} and "v3\n" in poller.bodies

    # The live site and the one that served before it (a request begun there ends there), no more.
    sites = sorted(int(p.name) for p in (disco.data_dir / "run" / "static" / "site").iterdir() if p.name.isdecimal())
    assert sites == [record["number"] - 1, record["number"]]
    assert (disco.data_dir / "run" / "static" / "site" / "live").readlink() == Path(str(record["number"]))


def test_a_missing_static_folder_fails_before_the_switch_naming_it(rig, tmp_path: Path):
    disco, alice = rig
    repo = make_repo(tmp_path / "nosite", site_files("ok\n"), message="ok")
    assert push(disco, alice, repo, "nosite").returncode == 0
    live = server_ref(disco, "nosite")
    commit(repo, {**site_files("ok\n"), "disco.toml": '[services.web]\nstatic = "dist"\n'}, "wrong folder")
    result = push(disco, alice, repo, "nosite")
    assert result.returncode != 0
    assert "the image has no /app/dist (static = 'dist' in disco.toml)" in result.stderr, result.stderr
    assert server_ref(disco, "nosite") == live and served(disco, "nosite") == "ok\n"


def test_a_static_site_from_the_commit_needs_no_dockerfile(rig, tmp_path: Path):
    disco, alice = rig
    repo = make_repo(tmp_path / "plain", {"disco.toml": '[services.web]\nstatic = "public"\nstatic_source = "repo"\n',
                                          "public/index.html": "plain\n"}, message="plain")
    result = push(disco, alice, repo, "plain")
    assert result.returncode == 0, result.stderr
    assert "of the commit" in result.stderr and "building" not in result.stderr
    assert served(disco, "plain") == "plain\n"
    commit(repo, {"public/escape": "x", "public/leak": ""}, "a link out")  # replaced by a link just below
    (repo / "public" / "leak").unlink()
    (repo / "public" / "leak").symlink_to("/etc/passwd")
    run(["git", "-C", str(repo), "add", "-A"], check=True)
    run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "link"],
        check=True)
    refused = push(disco, alice, repo, "plain")
    assert refused.returncode != 0 and "leak is a link leading outside the site" in refused.stderr, refused.stderr
    assert served(disco, "plain") == "plain\n"

    # The folder itself a link that stays inside the commit, but would lead out of the site once
    # moved beside the other sites (to Caddy's own files): refused.
    escape = make_repo(tmp_path / "escape", {"disco.toml": '[services.web]\nstatic = "dist"\nstatic_source = "repo"\n',
                                             "a/b/c/d/e/index.html": "x\n"}, message="escape")
    (escape / "1").symlink_to("a/b/c/d/e")
    (escape / "dist").symlink_to("1/../../../../..")
    run(["git", "-C", str(escape), "add", "-A"], check=True)
    run(["git", "-C", str(escape), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "links"],
        check=True)
    refused = push(disco, alice, escape, "escape")
    assert refused.returncode != 0 and "static folder dist is a link; name the folder itself" in refused.stderr, \
        refused.stderr


TOOLS_DOCKERFILE = "\n".join([*BASE, "COPY tools.txt /tools.txt",
                              'CMD ["/bin/busybox", "sh", "-c", "while true; do sleep 1; done"]']) + "\n"


def test_two_images_build_once_each_and_each_service_runs_its_own(rig, tmp_path: Path):
    disco, alice = rig
    files: dict[str, str | bytes] = {
        "busybox": BUSYBOX.read_bytes(),
        "Dockerfile": "\n".join([*BASE, "COPY www /www", "EXPOSE 8000", SERVE]) + "\n",
        "www/index.html": "web\n",
        "tools/busybox": BUSYBOX.read_bytes(),
        "tools/Dockerfile": TOOLS_DOCKERFILE,
        "tools/tools.txt": "made by the tools image\n",
        "disco.toml": '[images.tools]\ndockerfile = "tools/Dockerfile"\ncontext = "tools"\n'
                      '[services.web]\n[services.worker]\nimage = "tools"\n',
    }
    repo = make_repo(tmp_path / "two", files, message="two images")
    result = push(disco, alice, repo, "two")
    assert result.returncode == 0, result.stderr
    assert "building 2 images at once: default, tools" in result.stderr
    assert "[tools] " in result.stderr and "[default] " in result.stderr
    assert served(disco, "two") == "web\n"
    record = disco.api("GET", "/projects/two/deployments/1").json()
    worker = json.loads(run(["/usr/bin/docker", "service", "inspect", f"{disco.instance}-two-worker"],
                            check=True).stdout)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    web = json.loads(run(["/usr/bin/docker", "service", "inspect", f"{disco.instance}-two-web"],
                         check=True).stdout)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    assert web.split("@")[0] == record["image"] and worker.split("@")[0] != record["image"]
    container = wait_for("the worker's task", lambda: run(
        ["/usr/bin/docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={disco.instance}-two-worker"]
    ).stdout.split(), 60)[0]
    assert run(["/usr/bin/docker", "exec", container, "/bin/busybox", "cat", "/tools.txt"]).stdout == \
        "made by the tools image\n"

    # A rollback and an env change reuse both images: nothing is built again.
    commit(repo, {"www/index.html": "web 2\n"}, "v2")
    assert push(disco, alice, repo, "two").returncode == 0
    rolled = disco.api("POST", "/projects/two/rollback", {})
    assert rolled.is_success, rolled.text
    final = disco.finished_deployment("two", rolled.json()["number"])
    assert final["status"] == "live", final
    output = disco.api("GET", f"/projects/two/deployments/{final['number']}/output").text
    assert "building" not in output and output.count("reusing image of") == 2
    assert served(disco, "two") == "web\n"
