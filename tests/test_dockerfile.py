"""runtime/dockerfile.py read as data: the images a Dockerfile names (with their lines), ARG
expansion, what is refused, and cache mount ids rewritten with nothing else in the file changed."""

from __future__ import annotations

import pytest

from runtime.dockerfile import (
    cache_namespace,
    DockerfileError,
    ImageOwner,
    check_references,
    image_references,
    parse,
    prepare,
    private_cache_mounts,
)

OWNERS = {
    "shop-b:2-abc": ImageOwner("shop", "b"),
    "shop-a:1-def": ImageOwner("shop", "a"),
    "sha256:" + "b" * 64: ImageOwner("shop", "b"),
    "other-a:1": ImageOwner("other", "a"),  # another Disco instance on the same daemon
    "python:3.12": ImageOwner("", ""),  # pulled: no Disco labels
    "renamed:1": ImageOwner("shop", "b"),  # a name without the prefix that B's image still has
}


def refs(text: str, args: dict[str, str] | None = None) -> list[tuple[int, str, str]]:
    return [(r.line, r.what, r.name) for r in image_references(text, args)]


def refused(text: str, args: dict[str, str] | None = None) -> str:
    with pytest.raises(DockerfileError) as err:
        prepare(text, build_args=args or {}, instance="shop", project="a", cache_key=b"k",
                owner_of=OWNERS.get)
    return str(err.value)


def allowed(text: str, args: dict[str, str] | None = None) -> str:
    return prepare(text, build_args=args or {}, instance="shop", project="a", cache_key=b"k",
                   owner_of=OWNERS.get)


def test_every_image_reference_is_found_with_its_line():
    text = (
        "# syntax=docker/dockerfile:1.4\n"
        "FROM debian:bookworm AS base\n"
        "\n"
        "from --platform=linux/amd64 python:3.12 as build\n"
        "COPY --from=base /etc/os-release /x\n"
        "COPY --chown=1:1 --from=redis:7 /usr/bin/redis-server /y\n"
        "ADD --from=1 /a /b\n"
        "RUN --mount=type=bind,from=alpine:3,target=/m --mount=type=cache,target=/c ls /m\n"
        "RUN --mount=from=build,target=/m [\"ls\", \"/m\"]\n"
        "ONBUILD COPY --from=busybox:1 /bin/sh /sh\n"
    )
    assert refs(text) == [
        (1, "# syntax", "docker/dockerfile:1.4"),
        (2, "FROM", "debian:bookworm"),
        (4, "FROM", "python:3.12"),
        (6, "COPY --from", "redis:7"),
        (8, "RUN --mount from", "alpine:3"),
        (10, "ONBUILD COPY --from", "busybox:1"),
    ]


def test_continuations_comments_quotes_and_the_escape_directive():
    text = (
        "FROM scratch\n"
        "COPY \\\n"
        "# a comment inside the instruction\n"
        "\n"
        "  --from=shop-b:2-abc \\\n"
        "  /secret /s\n"
        'RUN --mount="type=bind,from=shop-b:2-abc,target=/m" true\n'
        "RUN --mo\\unt=type=bind,fr\"om=shop-b\":2-abc,target=/m true\n"
    )
    assert refs(text)[1:] == [(2, "COPY --from", "shop-b:2-abc"), (7, "RUN --mount from", "shop-b:2-abc"),
                              (8, "RUN --mount from", "shop-b:2-abc")]
    backtick = "# escape=`\nFROM scratch\nCOPY `\n  --from=shop-b:2-abc /s /s\nRUN echo \\\nFROM debian\n"
    assert refs(backtick) == [(2, "FROM", "scratch"), (3, "COPY --from", "shop-b:2-abc"), (6, "FROM", "debian")]
    # A directive after anything else is a comment: the escape stays a backslash.
    late = "FROM scratch\n# escape=`\nCOPY \\\n --from=x:1 /a /b\n"
    assert refs(late)[1:] == [(3, "COPY --from", "x:1")]
    assert parse("\ufeff# escape=`\nfrom scratch\n").escape == "`"  # a byte-order mark is no line


def test_heredoc_bodies_are_read_both_ways():
    # Docker 20.10's own frontend has no heredocs: it reads the body as instructions.
    text = "FROM scratch\nRUN <<CMD\nFROM shop-b:2-abc\nCMD\nCOPY <<-EOF /x\n\tFROM y\n\tEOF\n"
    assert (3, "FROM", "shop-b:2-abc") in refs(text)
    with_heredocs = [i.keyword for i in parse(text, heredocs=True).instructions]
    assert with_heredocs == ["FROM", "RUN", "COPY"]
    assert refused(text).startswith("Dockerfile line 3: FROM shop-b:2-abc: images of other projects")


def test_args_expand_in_from_and_unresolved_variables_are_refused():
    text = 'ARG REPO=shop-b\nARG TAG\nFROM ${REPO}:${TAG:-2}\nFROM "$REPO":x AS two\nFROM two\n'
    assert refs(text) == [(3, "FROM", "shop-b:2"), (4, "FROM", "shop-b:x")]
    assert refs(text, {"REPO": "debian", "TAG": "12"}) == [(3, "FROM", "debian:12"), (4, "FROM", "debian:x")]
    assert refs("FROM debian:$TARGETARCH\n")[0][2].startswith("debian:")  # BuildKit's own ARGs
    assert refused("FROM ${NOPE}shop-b:2\n") == (
        "Dockerfile line 1: FROM ${NOPE}shop-b:2: ${NOPE} cannot be resolved (declare it with ARG before the "
        "first FROM, or give it in disco.toml [build] args)")
    assert "line 3: COPY --from=$S (= ): no image name" in refused("FROM scratch\nARG S\nCOPY --from=$S /a /b\n")
    assert "line 2: COPY --from=$S: ${S} cannot be resolved" in refused("FROM scratch\nCOPY --from=$S /a /b\n")
    # An ARG declared after FROM is not usable in FROM.
    assert "${B} cannot be resolved" in refused("FROM scratch\nARG B=x\nFROM $B\n")
    # Build args override only in ARGs, and reach COPY --from through the stage's ARG.
    assert refs("FROM scratch\nARG SRC=debian\nCOPY --from=$SRC /a /b\n", {"SRC": "shop-b:2-abc"})[1:] == [
        (3, "COPY --from", "shop-b:2-abc")]


@pytest.mark.parametrize("line, why", [
    ("FROM shop-b:2-abc", "images of other projects cannot be used"),
    ("FROM shop-b:2", "images of other projects cannot be used"),  # guessed, not built: refused by name
    ("FROM docker.io/library/shop-b:7", "images of other projects cannot be used"),
    ("FROM shop-b@sha256:" + "c" * 64, "images of other projects cannot be used"),
    ("FROM sha256:" + "b" * 64, "images of other projects cannot be used"),
    ("FROM renamed:1", "images of other projects cannot be used"),
    ("FROM other-a:1", "images of another Disco instance on this server cannot be used"),
    ("FROM scratch\nCOPY --from=shop-b:2-abc /s /s", "images of other projects cannot be used"),
    ("FROM scratch\nRUN --mount=type=bind,from=shop-b:2-abc,target=/m true", "images of other projects"),
    ("FROM scratch\nRUN --mount=type=cache,from=shop-b:2-abc,target=/m true", "images of other projects"),
    ("# syntax=shop-a:1-def\nFROM scratch", "only Docker's own Dockerfile frontends"),
    ("# syntax=evil/frontend\nFROM scratch", "only Docker's own Dockerfile frontends"),
    ("# syntax=shop-b:2\nFROM scratch", "only Docker's own Dockerfile frontends"),
])
def test_what_is_refused_names_the_line(line: str, why: str):
    message = refused(line + "\n")
    lines = line.count("\n") + 1
    at = 1 if line.startswith("#") else lines
    assert message.startswith(f"Dockerfile line {at}: ") and why in message, message


@pytest.mark.parametrize("text", [
    "FROM debian:bookworm\n", "FROM python:3.12\n", "FROM caddy:2\n", "FROM shop-a:1-def\n", "FROM shop-a:3\n",
    "FROM docker/dockerfile:1\n", "# syntax=docker/dockerfile:1\nFROM scratch\n",
    "# syntax = docker.io/docker/dockerfile:1.4@sha256:" + "d" * 64 + "\nFROM scratch\n",
    "FROM scratch AS b\nFROM b\nCOPY --from=b /x /y\nCOPY --from=0 /x /y\n",
    "FROM scratch\nRUN --mount=type=cache,target=/c true\n",
])
def test_public_and_own_images_and_stages_are_allowed(text: str):
    allowed(text)


def test_a_stage_name_only_counts_once_defined():
    # A later stage of that name does not make an image named so in an earlier one a stage.
    assert refs("FROM scratch\nCOPY --from=shop-b /s /s\nFROM scratch AS shop-b\n")[1] == (2, "COPY --from", "shop-b")


def test_buildkit_settings_cannot_be_build_args():
    assert "BUILDKIT_SYNTAX cannot be set" in refused("FROM scratch\n", {"BUILDKIT_SYNTAX": "evil/frontend"})
    assert "BUILDKIT_CACHE_MOUNT_NS cannot be set" in refused("FROM scratch\n", {"BUILDKIT_CACHE_MOUNT_NS": "shop"})


def test_a_projects_own_repository_under_either_naming_is_its_own():
    found = image_references("FROM shop-my--app:3-abc\nFROM shop-my-app:2\n")
    check_references(found, "shop", "my-app", OWNERS.get)  # joined (runtime/names.py) and legacy
    with pytest.raises(DockerfileError, match="line 1: FROM shop-my--app:3-abc: images of other projects"):
        check_references(found, "shop", "my", OWNERS.get)


def test_cache_ids_are_namespaced_and_nothing_else_changes():
    text = (
        "# syntax=docker/dockerfile:1.4\n"
        "FROM scratch\n"
        "RUN --mount=type=cache,id=shared,target=/c,sharing=locked \\\n"
        "    --mount=type=bind,target=/b  ls /c   # keep me\n"
        "run --mount=type=cache,target=/root/.cache \\\n"
        "  --mount=type=cache,\\\n"
        "target=/d,ID=x echo hi\n"
        'RUN --mount="type=cache,target=/q" ["ls", "/q"]\n'
        "ONBUILD RUN --mount=type=cache,target=/o true\n"
        "RUN --mount=type=secret,id=npm true\n"
    )
    out = private_cache_mounts(text, "shop/a")
    assert out == (
        "# syntax=docker/dockerfile:1.4\n"
        "FROM scratch\n"
        "RUN --mount=type=cache,target=/c,sharing=locked,id=shop/a/shared \\\n"
        "    --mount=type=bind,target=/b  ls /c   # keep me\n"
        "run --mount=type=cache,target=/root/.cache,id=shop/a//root/.cache \\\n"
        "  --mount=type=cache,target=/d,id=shop/a/x echo hi\n"
        'RUN --mount=type=cache,target=/q,id=shop/a//q ["ls", "/q"]\n'
        "ONBUILD RUN --mount=type=cache,target=/o,id=shop/a//o true\n"
        "RUN --mount=type=secret,id=npm true\n"
    )


def test_cache_rewrite_keeps_crlf_heredocs_and_the_backtick_escape():
    text = "# escape=`\r\nFROM scratch\r\nRUN --mount=type=cache,target=/c `\r\n  ls /c\r\n"
    assert private_cache_mounts(text, "i/p") == (
        "# escape=`\r\nFROM scratch\r\nRUN --mount=type=cache,target=/c,id=i/p//c `\r\n  ls /c\r\n")
    heredoc = "FROM scratch\nRUN <<EOF\necho --mount=type=cache,id=x\nEOF\n"
    assert private_cache_mounts(heredoc, "i/p") == heredoc
    with pytest.raises(DockerfileError, match="write the mount type out"):
        private_cache_mounts("FROM scratch\nARG T=cache\nRUN --mount=type=$T,target=/c true\n", "i/p")


def test_namespaces_cannot_collide_through_dashes():
    one = private_cache_mounts("RUN --mount=type=cache,id=b-x,target=/c true\n", "shop/a")
    two = private_cache_mounts("RUN --mount=type=cache,id=x,target=/c true\n", "shop/a-b")
    assert "id=shop/a/b-x" in one and "id=shop/a-b/x" in two


@pytest.mark.parametrize("text", [
    "# foo=bar\n# syntax=attacker/frontend\nFROM debian\n",  # BuildKit 0.8 reads every leading key=value
    "#!/usr/bin/env docker-build\n# syntax=attacker/frontend\nFROM debian\n",
    "// syntax=attacker/frontend\nFROM debian\n",
    "# just a note\n\n#syntax = attacker/frontend\nFROM debian\n",
    '{"syntax": "attacker/frontend"}\n',
])
def test_a_frontend_named_any_way_a_buildkit_finds_it_is_checked(text: str):
    assert "only Docker's own Dockerfile frontends" in refused(text)


def test_an_escape_directive_after_another_comment_is_refused():
    # BuildKit 0.8 stops at `# check` and keeps `\\`; newer ones honour the escape: the last RUN
    # would be an instruction of its own to one and part of the previous RUN to the other.
    text = ("# check=skip=all\n# escape=`\nFROM debian\nRUN echo hi `\n"
            "RUN --mount=type=cache,id=x,target=/c touch /c/poison\n")
    assert "line 2: the escape directive must be the first line" in refused(text)
    assert "line 3: the escape directive" in refused("# a note\n\n# escape=`\nFROM debian\n")
    allowed("# syntax=docker/dockerfile:1\n# escape=`\nFROM debian\n")  # syntax first is read alike


def test_cache_ids_carry_a_keyed_digest_nobody_else_can_spell():
    ours = cache_namespace("shop", "a", b"server key")
    assert ours.startswith("shop/a/") and len(ours.rsplit("/", 1)[1]) == 16
    assert ours == cache_namespace("shop", "a", b"server key")  # the same across builds
    assert ours != cache_namespace("shop", "b", b"server key")
    assert ours != cache_namespace("shop", "a", b"another server's key")
    assert f"id={ours}/shared" in allowed_with_key("RUN --mount=type=cache,id=shared,target=/c true\n", b"server key")


def allowed_with_key(text: str, key: bytes) -> str:
    return prepare(text, build_args={}, instance="shop", project="a", cache_key=key, owner_of=OWNERS.get)
