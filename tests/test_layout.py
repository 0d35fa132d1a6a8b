"""The house's rules, checked on the source: arrows point down, docker-py stays in runtime/, no
module imports itself back through others (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
ROOMS = ("cli", "api", "gitserver", "hooks", "runtime")
# What each room may import of the project; rooms are listed from the top down.
MAY_IMPORT = {
    "cli": {"cli", "api", "gitserver", "hooks", "runtime"},
    "api": {"api", "hooks", "runtime"},
    "gitserver": {"gitserver", "hooks", "runtime"},
    "hooks": {"hooks", "runtime"},
    "runtime": {"runtime"},
}


def project_imports() -> dict[str, set[str]]:
    """Module name -> the project modules it imports (anywhere in the file, lazily too)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
               for room in ROOMS for p in (ROOT / room).rglob("*.py") if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            found |= {c for c in candidates if c in modules or c.split(".")[0] in ("docker",)}
        graph[name] = found
    return graph


def test_arrows_point_down_and_docker_stays_in_runtime():
    wrong = []
    for module, imported in project_imports().items():
        room = module.split(".")[0]
        for target in imported:
            target_room = target.split(".")[0]
            if target_room == "docker":
                if room != "runtime":
                    wrong.append(f"{module} imports docker-py: only runtime/ may")
            elif target_room not in MAY_IMPORT[room]:
                wrong.append(f"{module} imports {target}: {room}/ may not import {target_room}/")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back():
    imports = project_imports()
    graph = {m: {t for t in targets if t in imports} for m, targets in imports.items()}  # docker-py left out
    done: set[str] = set()
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:  # depth-first; a module on the path again is a cycle
        for target in sorted(graph[module]):
            if target in path:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_rules_see_real_imports():
    """A check that found nothing because it parsed nothing would pass too."""
    graph = project_imports()
    assert "api.app" in graph["cli.serve"] and "gitserver.server" in graph["cli.serve"]
    assert any(t.startswith("docker") for t in graph["runtime.docker_engine"])
