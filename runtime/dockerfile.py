"""What a project's Dockerfile may use, and its build cache made private: pure functions on text.

One project cannot hurt another through its build. BuildKit resolves image names against the
daemon's local images, so `FROM <instance>-b:2`, `COPY --from=...` and
`RUN --mount=type=bind,from=...` in project A would read project B's image, and
`RUN --mount=type=cache,id=X` is one cache for every build on the daemon. So, before a build:

- `image_references` finds every image the Dockerfile names, with its line: each `FROM` (after
  ARG expansion: ARGs before the first FROM, the `[build] args` of disco.toml and BuildKit's
  automatic platform ARGs), `COPY --from=` / `ADD --from=`, `--mount=...,from=` of any type, and
  the `# syntax=` directive. A name that is an earlier stage's name or index is a stage, not an
  image. A name still holding a variable that cannot be resolved is refused.
- `check_references` refuses, naming the line, a name under this server's instance prefix that
  is not this project's repository, and any local image labelled as built by
  a Disco instance (this one or another) for something else than this project (looked up
  through the engine, so sha256 ids and `name@sha256:` digests of such images count too).
  Public images (`debian:bookworm`) stay allowed, present locally or not.
  Only Docker's own Dockerfile frontends may be named in `# syntax=`: another frontend turns
  the file into build steps itself and could name any local image, past every check here.
- `private_cache_mounts` rewrites each `--mount=type=cache` so its id is
  `<instance>/<project>/<given id or target>`, other options kept and nothing else in the file
  changed. Namespaced ids rather than a builder per project: a builder per project needs
  buildx (`docker buildx create`), which Debian's docker 20.10 client lacks; BuildKit inside
  dockerd is one builder with one cache. The parts are joined with '/', which neither instance
  nor project names may hold, so no two projects can spell the same id ('-' could:
  project "a" with id "b-x" and project "a-b" with id "x").
- Build args named BUILDKIT_* are refused: BuildKit's frontend reads them as settings
  (BUILDKIT_SYNTAX picks another frontend, BUILDKIT_CACHE_MOUNT_NS moves cache ids).

The parser follows BuildKit's: parser directives only on the first lines (`# escape=` changes
the escape character), line continuations, comment and empty lines inside continuations dropped,
case-insensitive instructions, flags before the arguments (quotes and escapes inside them
removed), JSON-form arguments, ONBUILD's inner instruction, and heredocs (`RUN <<EOF`). Docker
20.10's built-in frontend has no heredocs (their bodies are read as instructions) while newer
frontends have them, so the file is read both ways and what either finds counts.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import platform
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from runtime import names

DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
# The directives every BuildKit honours; the 20.10 engine's (v0.8) stops at any other line,
# where newer ones also know `check`. `escape` is therefore only honoured before anything else.
KNOWN_DIRECTIVES = ("escape", "syntax")
# How BuildKit versions find the frontend: any leading `#` or `//` comment `syntax=...` (after a
# `#!` line), whatever other directives stand before it.
SYNTAX_COMMENT = re.compile(r"\s*(?:#|//)\s*syntax\s*=\s*(\S+)", re.IGNORECASE)
HEREDOC = re.compile(r"(\d*)<<(-?)([^<]*)")
HEREDOC_INSTRUCTIONS = ("RUN", "COPY", "ADD")
# Docker's own Dockerfile frontends, the only ones a `# syntax=` may name.
OFFICIAL_FRONTENDS = ("docker/dockerfile", "docker/dockerfile-upstream")
# The ids a cache mount may be rewritten from without quoting.
PLAIN_FIELD = re.compile(r"[^\s\"',\\`]*")


class DockerfileError(Exception):
    """The Dockerfile cannot be built here; the message names the line and why."""


@dataclass(frozen=True)
class ImageOwner:
    """The Disco labels of a local image: who built it (empty strings when unlabelled)."""

    instance: str
    project: str
    role: str = ""


@dataclass(frozen=True)
class Flag:
    name: str  # lower case, without the leading "--"
    value: str  # as BuildKit reads it: quotes and escapes removed
    start: int  # where the flag's word is in the original text
    end: int


@dataclass(frozen=True)
class Instruction:
    line: int  # where it starts, 1-based
    keyword: str  # upper case
    flags: tuple[Flag, ...]
    args: str  # after the flags, continuation lines joined


@dataclass(frozen=True)
class Parsed:
    directives: dict[str, tuple[int, str]]  # name -> (line, value)
    escape: str
    instructions: list[Instruction]


@dataclass(frozen=True)
class ImageRef:
    line: int
    what: str  # how the file names it: "FROM", "COPY --from", "RUN --mount from", "# syntax"
    name: str  # the image name, variables expanded
    written: str  # as written in the file

    def __str__(self) -> str:
        if self.what == "# syntax":
            return f"# syntax={self.written}"
        joiner = " " if self.what == "FROM" else "="
        shown = self.name if self.name == self.written else f"{self.written} (= {self.name})"
        return f"{self.what}{joiner}{shown}"


# -- parsing ---------------------------------------------------------------------------------


@dataclass
class _Line:
    start: int  # offset of its first character in the text
    text: str  # without the newline (and a trailing \r)
    number: int


def _lines(text: str) -> list[_Line]:
    lines, start = [], 0
    for number, piece in enumerate(text.split("\n"), 1):
        body = piece.removesuffix("\r")
        if number == 1 and body.startswith("\ufeff"):  # a byte-order mark
            lines.append(_Line(start + 1, body[1:], number))
        else:
            lines.append(_Line(start, body, number))
        start += len(piece) + 1
    return lines


def parse(text: str, heredocs: bool = False) -> Parsed:
    """The instructions as BuildKit's parser reads them (with or without heredocs)."""
    lines = _lines(text)
    directives: dict[str, tuple[int, str]] = {}
    escape = "\\"
    i = 0
    while i < len(lines):  # parser directives: only before anything else
        match = DIRECTIVE.match(lines[i].text.lstrip())
        key = match.group(1).lower() if match else ""
        if not match or key not in KNOWN_DIRECTIVES:
            break
        if key in directives:
            raise DockerfileError(f"Dockerfile line {lines[i].number}: only one {key} parser directive can be used")
        directives[key] = (lines[i].number, match.group(2))
        if key == "escape":
            if match.group(2) not in ("\\", "`"):
                raise DockerfileError(f"Dockerfile line {lines[i].number}: invalid escape token "
                                      f"{match.group(2)!r} does not match ` or \\")
            escape = match.group(2)
        i += 1
    _refuse_late_escape(lines, i)
    continuation = re.compile(r"([^" + re.escape(escape) + r"])" + re.escape(escape) + r"[ \t]*$|^"
                              + re.escape(escape) + r"[ \t]*$")
    instructions: list[Instruction] = []
    while i < len(lines):
        first = lines[i]
        i += 1
        stripped = first.text.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        # The logical line, and for each of its characters where it is in the text.
        chars: list[str] = []
        offsets: list[int] = []
        going = _join(first, len(first.text) - len(stripped), continuation, chars, offsets)
        while going and i < len(lines):
            line = lines[i]
            i += 1
            if not line.text.strip() or line.text.lstrip().startswith("#"):
                continue
            going = _join(line, 0, continuation, chars, offsets)
        logical = "".join(chars)
        if not logical.strip():
            continue
        instruction = _instruction(logical, offsets, first.number, escape)
        instructions.append(instruction)
        if heredocs and instruction.keyword in HEREDOC_INSTRUCTIONS:
            for chomp, name in _heredocs(instruction.args):
                while i < len(lines):
                    body = lines[i].text.lstrip("\t") if chomp else lines[i].text
                    i += 1
                    if body == name:
                        break
    return Parsed(directives, escape, instructions)


def _leading_comments(lines: list[_Line], start: int = 0) -> Iterator[_Line]:
    """The comment (and blank) lines before the first instruction."""
    for line in lines[start:]:
        stripped = line.text.strip()
        if stripped and not stripped.startswith(("#", "//")):
            return
        yield line


def _refuse_late_escape(lines: list[_Line], after: int) -> None:
    """An `escape` directive after another comment (`# check=...`, say) is honoured by some
    BuildKit versions and not by others: the file would not read the same to the check here
    and to the builder, so it is refused."""
    for line in _leading_comments(lines, after):
        match = DIRECTIVE.match(line.text.lstrip())
        if match and match.group(1).lower() == "escape":
            raise DockerfileError(f"Dockerfile line {line.number}: the escape directive must be the first line "
                                  "(only a syntax directive may come before it)")


def _frontends(text: str, lines: list[_Line]) -> Iterator[tuple[int, str]]:
    """Every frontend a BuildKit version could take from the file: `syntax=` in any leading
    comment, `#` or `//` (a `#!` line first is skipped), and a JSON file's "syntax" key."""
    for line in _leading_comments(lines):
        match = SYNTAX_COMMENT.match(line.text)
        if match:
            yield line.number, match.group(1)
    if text.lstrip("\ufeff \t\r\n").startswith("{"):
        try:
            data = json.loads(text.lstrip("\ufeff"))
        except ValueError:
            return
        if isinstance(data, dict) and "syntax" in data:
            yield 1, str(data["syntax"])


def _join(line: _Line, skip: int, continuation: re.Pattern[str], chars: list[str], offsets: list[int]) -> bool:
    """Append the line from `skip` to the logical line; True if it continues on the next line."""
    match = continuation.search(line.text)
    end = match.start() + len(match.group(1) or "") if match else len(line.text)
    chars.extend(line.text[skip:end])
    offsets.extend(range(line.start + skip, line.start + end))
    return match is not None


def _instruction(logical: str, offsets: list[int], number: int, escape: str) -> Instruction:
    lead = len(logical) - len(logical.lstrip())
    match = re.match(r"(\S+)\s*", logical[lead:])
    assert match is not None
    keyword = match.group(1).upper()
    at = lead + match.end()
    flags, at = _flags(logical, offsets, at)
    if keyword == "ONBUILD" and logical[at:].strip():
        inner = _instruction(logical[at:], offsets[at:], number, escape)
        return Instruction(number, f"ONBUILD {inner.keyword}", inner.flags, inner.args)
    return Instruction(number, keyword, tuple(flags), logical[at:].strip())


def _flags(line: str, offsets: list[int], at: int) -> tuple[list[Flag], int]:
    """The `--name=value` words at the start of the arguments, as BuildKit's extractBuilderFlags
    reads them (quotes removed, a backslash escaping the next character); and where the rest starts."""
    flags: list[Flag] = []
    n = len(line)
    while True:
        while at < n and line[at].isspace():
            at += 1
        if not line.startswith("--", at):
            return flags, at
        start, word, quote = at, [], ""
        while at < n:
            ch = line[at]
            if quote:
                if ch == quote:
                    quote = ""
                elif ch == "\\" and at + 1 < n:
                    at += 1
                    word.append(line[at])
                elif ch != "\\":
                    word.append(ch)
            elif ch.isspace():
                break
            elif ch in "'\"":
                quote = ch
            elif ch == "\\":
                if at + 1 < n:
                    at += 1
                    word.append(line[at])
            else:
                word.append(ch)
            at += 1
        text = "".join(word)
        if text == "--":
            return flags, at
        name, _, value = text[2:].partition("=")
        flags.append(Flag(name.lower(), value, offsets[start], offsets[at - 1] + 1))


def _heredocs(args: str) -> Iterator[tuple[bool, str]]:
    for word in args.split():
        match = HEREDOC.fullmatch(word)
        if match and match.group(3):
            name = match.group(3)
            if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
                name = name[1:-1]
            if name:
                yield match.group(2) == "-", name


# -- variables -------------------------------------------------------------------------------


class _Unresolved(Exception):
    pass


def expand(word: str, scope: Mapping[str, str], escape: str = "\\") -> str:
    """A word as BuildKit's shell lexer reads it: quotes removed, escapes applied, $VAR and
    ${VAR}, ${VAR:-x}, ${VAR-x}, ${VAR:+x}, ${VAR+x} replaced. A variable not in scope raises."""
    out: list[str] = []
    i, n = 0, len(word)

    def variable(i: int) -> tuple[str, int]:  # i is just after "$"
        if i < n and word[i] == "{":
            close = word.find("}", i)
            if close < 0:
                raise DockerfileError(f"missing '}}' in {word!r}")
            body = word[i + 1:close]
            match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])(.*))?", body, re.DOTALL)
            if not match:
                raise _Unresolved(body)
            name, modifier, other = match.groups()
            if modifier is None:
                if name not in scope:
                    raise _Unresolved(name)
                return scope[name], close + 1
            if name not in scope:
                if modifier in ("-", ":-"):
                    raise _Unresolved(name)  # a default only hides a variable nobody declared
                return "", close + 1
            value = scope[name]
            empty = modifier.startswith(":") and value == ""
            if modifier.endswith("-"):
                return (expand(other, scope, escape) if empty else value), close + 1
            return ("" if empty else expand(other, scope, escape)), close + 1
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", word[i:])
        if not match:
            return "$", i
        if match.group(0) not in scope:
            raise _Unresolved(match.group(0))
        return scope[match.group(0)], i + match.end()

    while i < n:
        ch = word[i]
        if ch == escape and i + 1 < n:
            out.append(word[i + 1])
            i += 2
        elif ch == "'":
            close = word.find("'", i + 1)
            close = n if close < 0 else close
            out.append(word[i + 1:close])
            i = close + 1
        elif ch == '"':
            i += 1
            while i < n and word[i] != '"':
                if word[i] == escape and i + 1 < n and word[i + 1] in ('"', "$", escape):
                    out.append(word[i + 1])
                    i += 2
                elif word[i] == "$":
                    value, i = variable(i + 1)
                    out.append(value)
                else:
                    out.append(word[i])
                    i += 1
            i += 1
        elif ch == "$":
            value, i = variable(i + 1)
            out.append(value)
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def automatic_args() -> dict[str, str]:
    """BuildKit's platform ARGs, usable in FROM without being declared."""
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(platform.machine(), platform.machine())
    values = {"OS": "linux", "ARCH": arch, "VARIANT": "", "PLATFORM": f"linux/{arch}"}
    return {f"{side}{key}": value for side in ("BUILD", "TARGET") for key, value in values.items()}


def _arg_pairs(args: str) -> Iterator[tuple[str, str | None]]:
    for word in args.split():
        name, eq, default = word.partition("=")
        yield name, default if eq else None


# -- what the file names ---------------------------------------------------------------------


def image_references(text: str, build_args: Mapping[str, str] | None = None,
                     name: str = "Dockerfile") -> list[ImageRef]:
    """Every image the file names, with its line, read with and without heredocs."""
    found: dict[tuple[int, str, str], ImageRef] = {}
    for line, value in _frontends(text, _lines(text)):
        found.setdefault((line, "# syntax", value), ImageRef(line, "# syntax", value, value))
    for heredocs in (False, True):
        for ref in _references(parse(text, heredocs), dict(build_args or {}), name):
            found.setdefault((ref.line, ref.what, ref.name), ref)
    return sorted(found.values(), key=lambda r: (r.line, r.what, r.name))


def _references(parsed: Parsed, build_args: dict[str, str], filename: str) -> Iterator[ImageRef]:
    escape = parsed.escape
    global_scope: dict[str, str] = dict(automatic_args())
    stages: list[str] = []  # lower-cased stage names, "" when unnamed
    scope: dict[str, str] = {}

    def resolve(word: str, what: str, line: int, values: Mapping[str, str]) -> str:
        try:
            return expand(word, values, escape)
        except _Unresolved as err:
            shown = f"{what} {word}" if what in ("FROM", "ARG") else f"{what}={word}"
            where = " before the first FROM" if what == "FROM" else ""
            raise DockerfileError(f"{filename} line {line}: {shown}: ${{{err}}} cannot be resolved "
                                  f"(declare it with ARG{where}, or give it in disco.toml [build] args)") from None

    def is_stage(value: str, current: int) -> bool:
        if not value:
            return False
        if value.isdigit():
            return int(value) < current
        return value.lower() in stages[:current]

    for ins in parsed.instructions:
        keyword = ins.keyword.removeprefix("ONBUILD ")
        if ins.keyword == "ARG" and not stages:  # global: usable in FROM
            for arg, default in _arg_pairs(ins.args):
                if arg in build_args:
                    global_scope[arg] = build_args[arg]
                else:
                    global_scope[arg] = resolve(default, "ARG", ins.line, global_scope) if default is not None else ""
            continue
        if keyword == "FROM" and ins.keyword == "FROM":
            words = ins.args.split()
            if not words:
                raise DockerfileError(f"{filename} line {ins.line}: FROM needs an image")
            image = resolve(words[0], "FROM", ins.line, global_scope)
            if not is_stage(image, len(stages)) or image.isdigit():
                yield ImageRef(ins.line, "FROM", image, words[0])
            as_name = words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else ""
            stages.append(as_name)
            scope = {}
            continue
        current = len(stages)
        if ins.keyword == "ARG":
            for arg, default in _arg_pairs(ins.args):
                if arg in build_args:
                    scope[arg] = build_args[arg]
                elif default is not None:
                    scope[arg] = resolve(default, "ARG", ins.line, {**global_scope, **scope})
                else:
                    scope[arg] = global_scope.get(arg, "")
        elif ins.keyword == "ENV":
            scope.update(_env_pairs(ins.args, escape, {**global_scope, **scope}))
        values = {**scope}
        if ins.keyword.startswith("ONBUILD"):
            current = -1  # the trigger runs in a later build, where no stage of this one exists
            values = {}
        for flag in ins.flags:
            if flag.name == "from" and keyword in ("COPY", "ADD"):
                value = resolve(flag.value, f"{keyword} --from", ins.line, values)
                if not is_stage(value, current):
                    yield ImageRef(ins.line, f"{ins.keyword} --from", value, flag.value)
            elif flag.name == "mount" and keyword == "RUN":
                source = mount_options(flag.value).get("from")
                if source is not None:
                    value = resolve(source, f"{ins.keyword} --mount from", ins.line, values)
                    if not is_stage(value, current):
                        yield ImageRef(ins.line, f"{ins.keyword} --mount from", value, source)


def _env_pairs(args: str, escape: str, values: Mapping[str, str]) -> dict[str, str]:
    words = args.split()
    if words and "=" not in words[0]:  # ENV KEY value
        try:
            return {words[0]: expand(args[len(words[0]):].strip(), values, escape)}
        except _Unresolved:
            return {}
    found = {}
    for word in words:
        key, _, value = word.partition("=")
        try:
            found[key] = expand(value, values, escape)
        except _Unresolved:
            pass
    return found


def mount_options(value: str) -> dict[str, str]:
    """A --mount's key=value options (keys lower case, the last one wins), as csv like BuildKit."""
    options: dict[str, str] = {}
    for row in csv.reader([value]):
        for field in row:
            key, eq, option = field.partition("=")
            options[key.strip().lower()] = option if eq else ""
    return options


# -- the rules -------------------------------------------------------------------------------


def _normalized(name: str) -> tuple[str, str]:
    """(repository, rest) the way Docker names local images: docker.io/library/ dropped."""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            name = name.removeprefix("library/")
            break
    else:
        name = name.removeprefix("library/")
    repository, at, digest = name.partition("@")
    slash = repository.rfind("/")
    colon = repository.rfind(":")
    if colon > slash:
        return repository[:colon], repository[colon:] + at + digest
    return repository, at + digest or ":latest"


def check_references(refs: list[ImageRef], instance: str, project: str,
                     owner_of: Callable[[str], ImageOwner | None], filename: str = "Dockerfile") -> None:
    """Refuse, naming the line, the first reference to an image this project may not use.

    The proxy's image is not refused by name: it is a public Caddy (or Debian's caddy binary),
    and a static site may well build FROM caddy:2. Images labelled as the proxy's are.
    """
    # Its repository as runtime/names.py joins it, and as versions before that named it.
    own = {names.join(instance, project), names.legacy(instance, project)}
    prefixes = (f"{names.join(instance)}-", f"{instance}-")
    for ref in refs:
        why = _refusal(ref, project, own, prefixes, instance, owner_of)
        if why:
            raise DockerfileError(f"{filename} line {ref.line}: {ref}: {why}")


def _refusal(ref: ImageRef, project: str, own: set[str], prefixes: tuple[str, ...], instance: str,
             owner_of: Callable[[str], ImageOwner | None]) -> str:
    name = ref.name.strip()
    if not name:
        return "no image name (an ARG left empty?)"
    repository, rest = _normalized(name)
    if ref.what == "# syntax" and repository not in OFFICIAL_FRONTENDS:
        return ("only Docker's own Dockerfile frontends (docker/dockerfile) can be used: "
                    "another frontend could read any image on this server")
    if repository.startswith(prefixes) and repository not in own:
        return "images of other projects cannot be used"
    owner = owner_of(name)
    if owner is not None and owner.instance:
        if owner.instance != instance:
            return "images of another Disco instance on this server cannot be used"
        if owner.project != project or owner.role == "proxy":
            return "images of other projects cannot be used" if owner.project else \
                "this server's own images cannot be used"
    return ""


def check_build_args(args: Mapping[str, str]) -> None:
    for name in args:
        if name.upper().startswith("BUILDKIT_"):
            raise DockerfileError(f"disco.toml [build] args: {name} cannot be set: BuildKit reads it as a setting "
                                  "of the build itself")


# -- private cache mounts --------------------------------------------------------------------


def private_cache_mounts(text: str, namespace: str) -> str:
    """The file with each `RUN --mount=type=cache` id made `<namespace>/<id or target>`."""
    spans: dict[tuple[int, int], str] = {}
    for heredocs in (False, True):
        parsed = parse(text, heredocs)
        for ins in parsed.instructions:
            if ins.keyword.removeprefix("ONBUILD ") != "RUN":
                continue
            for flag in ins.flags:
                if flag.name == "mount":
                    rewritten = _private_mount(flag, namespace, ins.line)
                    if rewritten is not None:
                        spans[(flag.start, flag.end)] = rewritten
    out, last = [], 0
    for (start, end), word in sorted(spans.items()):
        if start < last:
            continue
        out += [text[last:start], word]
        last = end
    out.append(text[last:])
    return "".join(out)


def _private_mount(flag: Flag, namespace: str, line: int) -> str | None:
    fields = next(csv.reader([flag.value]), [])
    options = mount_options(flag.value)
    kind = options.get("type", "bind")
    if "$" in kind:
        raise DockerfileError(f"Dockerfile line {line}: --mount type={kind}: write the mount type out, "
                              "without variables")
    if kind.lower() != "cache":
        return None
    given = options.get("id") or options.get("target") or options.get("dst") or options.get("destination") or ""
    kept = [f for f in fields if f.partition("=")[0].strip().lower() != "id"]
    for f in kept:
        if not PLAIN_FIELD.fullmatch(f):
            raise DockerfileError(f"Dockerfile line {line}: --mount={flag.value}: write a cache mount's options "
                                  "without quotes, spaces or backslashes")
    if not PLAIN_FIELD.fullmatch(given):
        raise DockerfileError(f"Dockerfile line {line}: --mount={flag.value}: a cache id cannot hold quotes, "
                              "spaces or backslashes")
    return "--mount=" + ",".join([*kept, f"id={namespace}/{given}"])


def cache_namespace(instance: str, project: str, key: bytes) -> str:
    """`<instance>/<project>/<16 hex>`: the hex is a keyed digest of the project (the key is this
    server's, kept in the data dir), so nobody can spell another project's cache id, not even
    through an ONBUILD trigger of a public base image that this check never sees."""
    digest = hmac.new(key, f"{instance}/{project}".encode(), hashlib.sha256).hexdigest()[:16]
    return f"{instance}/{project}/{digest}"


def prepare(text: str, *, build_args: Mapping[str, str], instance: str, project: str, cache_key: bytes,
            owner_of: Callable[[str], ImageOwner | None], filename: str = "Dockerfile") -> str:
    """Check the file and its build args; the text to build (cache mounts private to the project)."""
    check_build_args(build_args)
    refs = image_references(text, build_args, filename)
    check_references(refs, instance, project, owner_of, filename)
    return private_cache_mounts(text, cache_namespace(instance, project, cache_key))
