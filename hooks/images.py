"""A deployment's images: built from the commit (one per [build] / [images.NAME] the app uses,
in parallel as the machine allows, all before anything starts), or reused from an earlier
deployment by a rollback or an env change.

Every image is tagged in the project's repository with a random `<number>-<random>` tag, so a
deployment with several images has several tags; the record keeps the default image's in
`image` and the others' in `images` (name -> tag).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hooks.engine import DeployEngine
from hooks.errors import DeployFailed
from runtime import gitrepo
from runtime.appconfig import DEFAULT_IMAGE, AppConfig, BuildConfig
from runtime.dockerfile import DockerfileError, prepare
from runtime.settings import Settings, load_or_create_secret
from runtime.store import Deployment

Line = Callable[[str], None]


class Images:
    """The images one deployment makes; `made` lists every tag it created, for the undo."""

    def __init__(self, settings: Settings, engine: DeployEngine, deployment: Deployment, out: Line,
                 cancelled: Callable[[], bool]) -> None:
        self.settings, self.engine, self.d, self.out, self.cancelled = settings, engine, deployment, out, cancelled
        self.made: list[str] = []
        self._lock = threading.Lock()

    def reuse(self, source: Deployment) -> dict[str, str]:
        """New tags on the images of `source` (no rebuild): image name -> tag."""
        tags = {}
        for name, old in {DEFAULT_IMAGE: source.image, **source.image_tags}.items():
            if not old:
                continue
            tag = self._new_tag()
            self.engine.retag(old, tag)
            tags[name] = tag
            self.out(f"reusing image of {old} (no rebuild)" + ("" if name == DEFAULT_IMAGE else f" for {name}"))
        return tags

    def build(self, repo: Path, config: AppConfig, tree: Path, work: Path) -> dict[str, str]:
        """Build every image the app needs from the exported `tree`: image name -> tag."""
        wanted = config.images_to_build
        plans = {name: self._plan(name, image, tree, work / name) for name, image in wanted.items()}
        if len(plans) == 1:
            [(name, (context, dockerfile, image))] = plans.items()
            return {name: self._build_one(name, context, dockerfile, image, self.out)}
        self.out(f"building {len(plans)} images at once: {', '.join(plans)}")
        failures: list[Exception] = []  # in the order they happened: the first is the cause

        def build(name: str) -> str:
            context, dockerfile, image = plans[name]
            try:
                return self._build_one(name, context, dockerfile, image, lambda line: self.out(f"[{name}] {line}"),
                                       stop=lambda: bool(failures) or self.cancelled())
            except Exception as err:
                with self._lock:
                    failures.append(err)  # the other builds stop: the deployment fails anyway
                raise

        with ThreadPoolExecutor(max_workers=max(1, min(len(plans), os.cpu_count() or 1))) as pool:
            futures = {name: pool.submit(build, name) for name in plans}
        if failures:
            raise failures[0]
        return {name: future.result() for name, future in futures.items()}

    def _plan(self, name: str, image: BuildConfig, tree: Path, work: Path) -> tuple[Path, Path, BuildConfig]:
        """(context, checked Dockerfile, config) of one image, its paths checked against the tree."""
        where = "build" if name == DEFAULT_IMAGE else f"images.{name}"
        dockerfile = tree / image.dockerfile
        context = tree / image.context
        for path, what in ((dockerfile, f"{where}.dockerfile"), (context, f"{where}.context")):
            # A symlink in the repo must not lead the build to the server's own files.
            if not path.resolve().is_relative_to(tree.resolve()):
                raise DeployFailed(f"{what} leads outside the repo (through a symlink)")
        if not dockerfile.is_file():
            raise DeployFailed(f"no Dockerfile at {image.dockerfile} in {self.d.commit_sha[:7]}"
                               + ("" if name == DEFAULT_IMAGE else f" (images.{name})"))
        return context, self._checked_dockerfile(dockerfile, image.dockerfile, image.args, work), image

    def _build_one(self, name: str, context: Path, dockerfile: Path, image: BuildConfig, out: Line,
                   stop: Callable[[], bool] | None = None) -> str:
        self.out(f"building {image.dockerfile} of {self.d.commit_sha[:7]}"
                 + ("" if name == DEFAULT_IMAGE else f" (image {name})"))
        labels = self.engine.labels(project=self.d.project, deployment=str(self.d.number), commit=self.d.commit_sha)
        tag = self._new_tag()  # a cancelled build may still tag it: listed for the undo first
        self.engine.build(context, dockerfile, tag, image.args, labels, out, stop=stop or self.cancelled)
        return tag

    def _new_tag(self) -> str:
        tag = self.engine.image_tag(self.d.project, self.d.number)  # random: the record keeps it
        with self._lock:
            self.made.append(tag)
        return tag

    def _checked_dockerfile(self, dockerfile: Path, shown: str, args: dict[str, str], work: Path) -> Path:
        """The Dockerfile to build: refused if it names an image this project may not use, and
        with its cache mounts made private to the project (runtime/dockerfile.py). Written beside
        the exported tree, so the build context stays the commit's own files."""
        text = dockerfile.read_bytes().decode("utf-8", "surrogateescape")
        try:
            checked = prepare(text, build_args=args, instance=self.settings.instance, project=self.d.project,
                              cache_key=load_or_create_secret(self.settings.cache_key_path),
                              owner_of=self.engine.image_owner,
                              filename=shown)
        except DockerfileError as err:
            raise DeployFailed(str(err)) from None
        target = work / "dockerfile" / dockerfile.name
        target.parent.mkdir(parents=True)
        target.write_bytes(checked.encode("utf-8", "surrogateescape"))
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")  # BuildKit reads it beside the file
        if ignore.is_file():
            target.with_name(ignore.name).write_bytes(ignore.read_bytes())
        return target


def submodule_warnings(repo: Path, commit: str) -> list[str]:
    return [f"warning: submodule {submodule} is skipped: its files are not part of the build context"
            for submodule in gitrepo.submodules(repo, commit)]
