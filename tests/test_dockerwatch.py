"""hooks/dockerwatch.py: what the daemon says and does as dockerd goes away and comes back."""

from __future__ import annotations

import logging
import threading

import pytest

from hooks.dockerwatch import DockerWatch


def test_going_and_coming_back_is_said_once_each_and_the_proxy_is_checked_on_return(
        caplog: pytest.LogCaptureFixture):
    answers = iter([True, False, False, True, True])
    returns: list[str] = []
    watch = DockerWatch(lambda: next(answers), on_back=lambda: returns.append("proxy checked"))
    with caplog.at_level(logging.INFO, logger="disco.docker"):
        for _ in range(5):
            watch.check()
    said = [record.getMessage() for record in caplog.records]
    assert [line.split(":")[0] for line in said] == ["Docker is not reachable", "Docker is reachable again"]
    assert returns == ["proxy checked"] and watch.up


def test_a_failing_return_step_does_not_stop_the_watch():
    answers = iter([False, True, False, True] + [True] * 10_000)
    returns: list[str] = []
    done = threading.Event()

    def on_back() -> None:
        returns.append("back")
        if len(returns) == 1:
            raise RuntimeError("the proxy check failed")
        done.set()

    watch = DockerWatch(lambda: next(answers), on_back=on_back, every=0.001)
    watch.start()
    try:
        assert done.wait(10), "the watch stopped after a failing return step"
    finally:
        watch.stop()
    assert returns == ["back", "back"]
