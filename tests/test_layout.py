"""The package's layers: imports only go downward, and there are no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"

#: Layers from the ground up; a module may import its own layer and the ones before it.
LAYERS = [
    {"errors", "config", "files", "plotting", "seeding"},
    {"data"},
    {"model"},
    {"inference"},
    {"training"},
    {"posterior"},
    {"runs"},
    {"cli"},
]


def layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"pyro_vae.{module} is in no layer of tests/test_layout.py: add it")


def imports() -> dict[str, set[str]]:
    """``{module: modules it imports}``, within the package, relative names resolved."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = parts[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions count too
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(package[: len(package) - node.level + 1])
                if node.module:
                    targets.add(".".join(base + node.module.split(".")))
                else:
                    targets.update(".".join(base + [alias.name]) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro_vae."):
                targets.add(node.module.removeprefix("pyro_vae."))
        graph[name] = {t for t in targets if t}
    return graph


def test_imports_only_go_downward():
    wrong = []
    for module, targets in imports().items():
        if module in ("", "__main__"):  # the package's front door imports everything
            continue
        for target in targets:
            if layer(target) > layer(module):
                wrong.append(f"pyro_vae.{module} imports pyro_vae.{target}")
    assert not wrong, "imports that go up a layer:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    full = imports()
    graph = {module: {t for t in targets if t in full and t != module} for module, targets in full.items()}
    graph.pop("", None)  # the package's front door
    finished: set[str] = set()

    def find_cycle(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in finished:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = find_cycle(nxt, path + [node])
            if found:
                return found
        finished.add(node)
        return None

    for node in sorted(graph):
        cycle = find_cycle(node, [])
        assert cycle is None, "import cycle: " + " -> ".join(f"pyro_vae.{m}" for m in cycle)
