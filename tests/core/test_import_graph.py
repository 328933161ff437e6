"""No import circle inside a distribution, counting imports inside functions too.

An import placed inside a function hides a circle from Python's start-up; it
does not remove it: the two modules still need each other. This reads every
module's `import` statements (wherever they are) and looks for a cycle among
the modules of keras_ssl and of keras_ssl_methods.
"""

import ast
import os

import pytest

from tests.helpers import REPO

PACKAGES = {"keras_ssl": os.path.join(REPO, "keras_ssl"),
            "keras_ssl_methods": os.path.join(REPO, "plugins", "keras_ssl_methods")}


def _modules(root: str) -> dict[str, str]:
    """`{dotted module name: path}` of every module under package folder `root`."""
    modules = {}
    parent = os.path.dirname(root)
    for folder, _, files in os.walk(root):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                name = os.path.relpath(path, parent)[:-3].replace(os.sep, ".")
                modules[name.removesuffix(".__init__")] = path
    return modules


def _imported(module: str, path: str, modules: dict) -> set[str]:
    """The modules of `modules` that `module` imports anywhere in its file."""
    def known(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + [base] if base else parts)
            found.update(known(f"{base}.{alias.name}") for alias in node.names)
    # Importing a submodule runs its parent packages first: that is not a circle.
    return {name for name in found if name and name != module
            and not module.startswith(name + ".")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as `[a, b, ..., a]`, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == "open":
                return stack[stack.index(successor):] + [successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_circle(package):
    modules = _modules(PACKAGES[package])
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)
