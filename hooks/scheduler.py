"""Scheduled services (`[services.NAME] schedule = "*/15 * * * *"`): one scheduler for the whole
daemon runs them, whatever the number of projects.

At each time a service's schedule names, one container of the live deployment's image runs the
service's command with the project's env and the service's volumes, and exits. The schedule and
the image are always the live deployment's, read afresh on every tick: a deploy switches both,
and a failed one leaves the old ones in place. Runs of one service never overlap: a time that
comes while the previous run still goes is recorded as skipped. The last time handled is kept in
the store, so a daemon that was down runs a missed time once, not once per time it missed.

Each run is recorded (hooks' callers read them through the API) with its output in
`<data dir>/cron/<project>/<service>/<id>.log`, env values masked as in deployment output.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from hooks.engine import DeployEngine
from hooks.errors import Refused
from hooks.output import DeployOutput
from runtime import gitrepo
from runtime.appconfig import AppConfig, AppConfigError, ServiceConfig
from runtime.appsource import config_at
from runtime.cron import Schedule, parse_schedule
from runtime.docker_engine import STOP_GRACE, DockerError, RunResult
from runtime.docker_specs import task_limits
from runtime.settings import Settings
from runtime.store import CronRun, CronRunStatus, Deployment, Store

log = logging.getLogger("disco.cron")
ROLE = "cron"  # the disco.role label of a scheduled run's container

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def fast_clock(anchor: float, speed: float) -> Clock:
    """A clock that runs `speed` times faster than the real one since the Unix time `anchor`.
    For tests only (DISCO_TEST_CLOCK, read by cli/serve.py), so an every-minute schedule can be
    watched in seconds while the scheduler below runs exactly as in production. The same anchor
    gives the same time in a restarted daemon, so a restart can be tested too."""
    return lambda: datetime.fromtimestamp(anchor + (time.time() - anchor) * speed, UTC)


@dataclass(frozen=True)
class ScheduledService:
    """A scheduled service of a project's live deployment, as `disco cron` lists it."""

    service: str
    schedule: str
    command: str  # as written ("" runs the image's CMD)
    next_at: str
    last_run: CronRun | None


class Scheduler:
    def __init__(self, settings: Settings, store: Store, engine: DeployEngine, clock: Clock = utc_now,
                 tick_seconds: float = 1.0) -> None:
        self.settings, self.store, self.engine, self.clock = settings, store, engine, clock
        self.tick_seconds = tick_seconds
        self._lock = threading.Lock()  # guards _running, _threads and _paused
        self._running: dict[tuple[str, str], int] = {}  # (project, service) -> the run going on
        self._threads: dict[int, threading.Thread] = {}  # run id -> its thread, while it runs
        self._paused: set[str] = set()  # projects being deleted: nothing of theirs starts
        self._configs: dict[str, tuple[str, AppConfig | None]] = {}  # project -> (live commit, its config)
        self._schedules: dict[str, Schedule] = {}
        self._stopping = threading.Event()

    # -- the daemon's one scheduler thread -------------------------------------------------

    def start(self) -> None:
        threading.Thread(target=self._loop, name="scheduler", daemon=True).start()

    def stop(self, wait: float = STOP_GRACE + 2) -> None:
        """Stop scheduling; runs going on are stopped (SIGTERM, then SIGKILL) and recorded
        `interrupted`, waiting up to `wait` seconds for them (a restart settles the rest)."""
        self._stopping.set()
        deadline = time.monotonic() + wait
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while not self._stopping.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception:  # the store or a bug: the next tick tries again
                log.exception("scheduler tick failed")

    def recover(self) -> list[CronRun]:
        """Settle the runs a daemon that died left `running`: their containers go."""
        left = self.store.cron_runs_with_status(CronRunStatus.RUNNING)
        for project in sorted({run.project for run in left}):
            try:
                self.engine.remove_containers(project, ROLE)
            except DockerError as err:
                log.warning("could not remove the scheduled runs of %s left by the last daemon: %s", project, err)
        settled = [self.store.update_cron_run(run.id, status=CronRunStatus.INTERRUPTED, finished_at=_iso(utc_now()),
                                              reason="interrupted by a daemon restart") for run in left]
        return [run for run in settled if run is not None]

    def tick(self) -> None:
        """Start (or skip) every scheduled service whose time has come since the last tick."""
        now = self.clock()
        for live in self.store.live_deployments():
            config = self._config(live)
            for service in config.scheduled_services.values() if config else ():
                try:
                    self._consider(live, service, now)
                except Refused as refused:  # its project is being deleted
                    log.info("%s/%s not started: %s", live.project, service.name, refused)
                except Exception:  # one service's trouble must not hold up the others
                    log.exception("scheduling %s/%s failed", live.project, service.name)

    def _consider(self, live: Deployment, service: ServiceConfig, now: datetime) -> None:
        key = (live.project, service.name)
        assert service.schedule is not None
        state = self.store.cron_state(*key)  # from the store each time: a key lookup
        if state is None or state[0] != service.schedule:
            # First seen, or its schedule changed: its first time is the next one from now.
            self._remember(key, service.schedule, now)
            return
        due = self._schedule(service.schedule).previous_at_or_before(now)
        if due is None or due <= datetime.fromisoformat(state[1]):
            return
        # Only the latest time that passed: a daemon that was down runs a missed time once.
        self._remember(key, service.schedule, due)
        self._start(live, service, "schedule", "", due)

    # -- what users ask ---------------------------------------------------------------------

    def run_now(self, project: str, service: str, user: str) -> CronRun:
        """Run a scheduled service now, out of its schedule (`disco cron:run`)."""
        live, config = self._live(project)
        chosen = config.scheduled_services.get(service)
        if chosen is None:
            raise Refused(f"{project} has no scheduled service {service!r} in its live deployment", "not_found")
        run = self._start(live, chosen, "manual", user, None, skip_when_busy=False)
        self.store.audit(user, "cron:run", project, service)
        return run

    def scheduled(self, project: str) -> list[ScheduledService]:
        live = self.store.live_deployment(project)
        config = self._config(live) if live else None
        if config is None:
            return []
        now = self.clock()
        listed = []
        for service in config.scheduled_services.values():
            assert service.schedule is not None
            runs = self.store.cron_runs(project, service.name, limit=1)
            listed.append(ScheduledService(
                service=service.name, schedule=service.schedule, command=service.command or "",
                next_at=_iso(self._schedule(service.schedule).next_after(now)), last_run=runs[0] if runs else None))
        return listed

    def runs(self, project: str, service: str, limit: int = 50) -> list[CronRun]:
        return self.store.cron_runs(project, service, limit)

    @contextmanager
    def paused(self, project: str) -> Iterator[None]:
        """Nothing of this project starts meanwhile (while it is being deleted)."""
        with self._lock:
            self._paused.add(project)
        try:
            yield
        finally:
            with self._lock:
                self._paused.discard(project)

    # -- a run --------------------------------------------------------------------------------

    def _start(self, live: Deployment, service: ServiceConfig, trigger: str, user: str,
               due: datetime | None, skip_when_busy: bool = True) -> CronRun:
        """Start a run. When one of this service goes on, the schedule's is recorded skipped and
        a manual one refused: checked and taken under one lock, so a tick and `cron:run` cannot
        both start one."""
        key = (live.project, service.name)
        with self._lock:
            if live.project in self._paused:
                raise Refused(f"{live.project} is being deleted", "conflict")
            going = self._running.get(key)
            if going is not None and not skip_when_busy:
                raise Refused(f"{service.name} is running already (run #{going}); runs never overlap", "conflict")
            if going is not None:
                return self.store.add_cron_run(self._record(live, service, CronRunStatus.SKIPPED, trigger, user, due,
                                                            reason=f"run #{going} was still going"))
            run = self.store.add_cron_run(self._record(live, service, CronRunStatus.RUNNING, trigger, user, due))
            self._running[key] = run.id
            thread = threading.Thread(target=self._run, args=(run, live, service), name=f"cron-run-{run.id}",
                                      daemon=True)
            self._threads[run.id] = thread
        thread.start()
        return run

    def _run(self, run: CronRun, live: Deployment, service: ServiceConfig) -> None:
        status, reason, code = CronRunStatus.FAILED, "", None
        output: DeployOutput | None = None
        try:
            log_path = self.settings.cron_dir / live.project / service.name / f"{run.id}.log"
            self.store.update_cron_run(run.id, log_path=str(log_path))
            env = self.store.env(live.project)
            output = DeployOutput(log_path, list(env.values()))
            output.line(f"run #{run.id} of {live.project}/{service.name} ({run.trigger}), "
                        f"image of deployment #{live.number}")
            status, reason, code = _outcome(self._run_container(run, live, service, env, output.line), service)
        except DockerError as err:
            reason = str(err)
        except Exception as err:  # a bug: recorded, not left "running" forever
            log.exception("run #%d of %s/%s crashed", run.id, live.project, service.name)
            reason = f"internal error: {err}"
        finally:
            try:
                if output is not None:
                    output.line(f"run #{run.id} {status}" + (f": {reason}" if reason else ""))
                    output.close()
                self.store.update_cron_run(run.id, status=status, reason=reason, exit_code=code,
                                           finished_at=_iso(utc_now()))
            finally:
                with self._lock:
                    self._running.pop((live.project, service.name), None)
                    self._threads.pop(run.id, None)

    def _run_container(self, run: CronRun, live: Deployment, service: ServiceConfig, env: dict[str, str],
                       on_line: Callable[[str], None]) -> RunResult:
        mounts = [(self.engine.volume_name(live.project, v.name), v.mount) for v in service.volumes]
        for volume, _ in mounts:  # a scheduled service's own volume may not exist yet
            self.engine.ensure_volume(volume, live.project)
        image = live.image_of(service.image)
        return self.engine.run_to_end(
            image=image,
            command=self._command(image, service),
            env={**env, "DISCO_PROJECT": live.project, "DISCO_SERVICE": service.name,
                 "DISCO_DEPLOYMENT": str(live.number), "DISCO_COMMIT": live.commit_sha, "DISCO_CRON_RUN": str(run.id)},
            mounts=mounts,
            labels=self.engine.labels(project=live.project, service=service.name, role=ROLE, run=str(run.id)),
            limits=task_limits(service.limits, self.settings),
            on_line=on_line,
            timeout=service.timeout,
            stop=self._stopping.is_set,
        )

    def _command(self, image: str, service: ServiceConfig) -> list[str] | None:
        if service.command is None:
            return None
        return [*self.engine.image_shell(image), service.command] if service.shell else shlex.split(service.command)

    def _record(self, live: Deployment, service: ServiceConfig, status: CronRunStatus, trigger: str, user: str,
                due: datetime | None, reason: str = "") -> dict:
        at = _iso(utc_now())
        return {"project": live.project, "service": service.name, "status": status.value, "trigger": trigger,
                "user": user, "due_at": _iso(due) if due else "", "started_at": at,
                "finished_at": at if status == CronRunStatus.SKIPPED else "", "exit_code": None,
                "reason": reason, "deployment": live.number, "image": live.image, "log_path": ""}

    # -- caches -------------------------------------------------------------------------------

    def _live(self, project: str) -> tuple[Deployment, AppConfig]:
        live = self.store.live_deployment(project)
        if live is None:
            raise Refused(f"{project} has no live deployment to run a scheduled service of", "conflict")
        config = self._config(live)
        if config is None:
            raise Refused(f"the config of {project}'s live commit {live.commit_sha[:7]} cannot be read",
                          "invalid_config")
        return live, config

    def _config(self, live: Deployment) -> AppConfig | None:
        """The live commit's config, read once per live commit (one kept per project)."""
        cached = self._configs.get(live.project)
        if cached is not None and cached[0] == live.commit_sha:
            return cached[1]
        try:
            config: AppConfig | None = config_at(gitrepo.repo_path(self.settings.repos_dir, live.project),
                                                 live.commit_sha)
        except (AppConfigError, gitrepo.GitRepoError) as err:
            log.warning("%s: the live commit's config cannot be read (%s): nothing of it is scheduled",
                        live.project, err)
            config = None
        self._configs[live.project] = (live.commit_sha, config)
        return config

    def _schedule(self, text: str) -> Schedule:
        if text not in self._schedules:
            self._schedules[text] = parse_schedule(text)
        return self._schedules[text]

    def _remember(self, key: tuple[str, str], schedule: str, due: datetime) -> None:
        self.store.set_cron_state(*key, schedule, due.astimezone(UTC).isoformat())


def _outcome(result: RunResult, service: ServiceConfig) -> tuple[CronRunStatus, str, int | None]:
    if result.cancelled:
        return CronRunStatus.INTERRUPTED, "the daemon stopped during the run", None
    if result.timed_out:
        return CronRunStatus.FAILED, f"timed out after {service.timeout} s (set services.{service.name}.timeout)", None
    if result.out_of_memory:
        return CronRunStatus.FAILED, "ran out of memory and was killed", result.exit_code
    if result.exit_code != 0:
        return CronRunStatus.FAILED, f"exited with {result.exit_code}", result.exit_code
    return CronRunStatus.SUCCEEDED, "", 0


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")
