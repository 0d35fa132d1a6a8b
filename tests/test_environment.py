"""The set-up command's promise: a running Docker engine in swarm mode and the tools later steps use."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import require_docker


def test_docker_engine_runs_in_swarm_mode():
    require_docker()
    state = subprocess.run(["/usr/bin/docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert state == "active"


@pytest.mark.parametrize("tool", ["git", "ssh", "ssh-keygen", "busybox", "caddy"])
def test_tools_are_installed(tool: str):
    if shutil.which(tool) is None and os.environ.get("CI") != "true":
        pytest.skip(f"{tool} is missing; ./setup.sh test installs it")
    assert shutil.which(tool) is not None
