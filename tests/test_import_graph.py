"""No module of organic_sd/ imports one that (directly or through others) imports it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "organic_sd"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules `name` imports anywhere in its file, function-level imports included."""

    def known(mod: str) -> str | None:  # a.b.c -> the longest prefix that is a module of the package
        while mod and mod not in modules:
            mod = mod.rpartition(".")[0]
        return mod or None

    deps = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            deps |= {known(a.name) for a in node.names if a.name.startswith("organic_sd")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package holding this file
                pkg = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            if base.startswith("organic_sd"):  # `from pkg import mod` imports pkg.mod
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base) for a in node.names}
    return deps - {None, name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a] of the graph, or None."""
    colour, stack = {}, []

    def visit(v):
        colour[v] = "open"
        stack.append(v)
        for w in sorted(graph[v]):
            if colour.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in colour and (found := visit(w)):
                return found
        colour[v] = "done"
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in colour and (found := visit(v)):
            return found
    return None


def test_finds_a_cycle_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_the_package():
    modules = _modules()
    graph = {name: _imports(name, f, modules) for name, f in modules.items()}
    assert "organic_sd.ovae.model" in graph["organic_sd.ovae.train"]  # the parser sees imports at all
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
