"""Test apps: FROM scratch images with Debian's static busybox (no registry to pull from here)."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import commit, make_repo

BUSYBOX = Path(shutil.which("busybox") or "/bin/busybox")
# busybox answers as `sh` when called so, which gives shell-form RUN lines a /bin/sh.
BASE = ["FROM scratch", "COPY busybox /bin/busybox", "COPY busybox /bin/sh"]
SERVE = 'CMD ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/www"]'


def web_files(text: str, dockerfile: list[str] | None = None, **extra: str | bytes) -> dict[str, str | bytes]:
    """A busybox httpd serving /www/index.html = text, on the image's single EXPOSEd port 8000."""
    lines = dockerfile if dockerfile is not None else [*BASE, "COPY www /www", "EXPOSE 8000", SERVE]
    return {
        "busybox": BUSYBOX.read_bytes(),
        "Dockerfile": "\n".join(lines) + "\n",
        "www/index.html": text,
        **extra,
    }


def web_app(path: Path, text: str = "v1\n", dockerfile: list[str] | None = None, **extra: str | bytes) -> Path:
    return make_repo(path, web_files(text, dockerfile, **extra), message=text.strip())


def new_version(path: Path, text: str, dockerfile: list[str] | None = None, **extra: str | bytes) -> str:
    return commit(path, web_files(text, dockerfile, **extra), text.strip())


def shell_cmd(script: str) -> str:
    """A CMD running `script` in busybox sh, in exec form so no shell parses it first."""
    escaped = script.replace("\\", "\\\\").replace('"', '\\"')
    return f'CMD ["/bin/busybox", "sh", "-c", "{escaped}"]'
