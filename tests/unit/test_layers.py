"""The layering the README promises, read from the code: data flows one way, each module imports only from its
own layer or below (never in a circle), and sdlib's own modules are imported at the top of the file."""

import ast
from pathlib import Path

import pytest

SDLIB = Path(__file__).resolve().parents[2] / "sdlib"

# bottom to top; a module may import from its own layer (without a circle) or any layer below
LAYERS = [
    ("base", ["errors", "paths", "types", "settings", "provenance", "cache", "timings"]),
    ("runs", ["runs"]),
    ("parts", ["parts", "fold"]),
    ("maths", ["metrics", "stats", "loss", "states", "lens", "measurement"]),
    ("models", ["models", "packaged"]),
    ("data", ["data", "bundle"]),
    ("train", ["train"]),
    ("evaluation", ["evaluation", "pruning"]),
    ("studies", ["studies"]),
    ("experiments", ["experiments"]),
    ("figures", ["figures"]),
    ("cli", ["cli", "__main__", "__init__"]),
]
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
# imported inside functions on purpose: importing it imports lm_eval (a heavy optional package) at its top
LAZY = {"sdlib.evaluation.harness"}


def _modules():
    for path in sorted(SDLIB.rglob("*.py")):
        parts = path.relative_to(SDLIB.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _layer(module: str) -> int:
    rest = module.split(".")[1:] or ["__init__"]
    return LAYER_OF[rest[0]]


def _imports(path: Path, package: str):
    """(imported sdlib module, line, at the top of the file?) for every import of an sdlib module."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sdlib"):
            names = [node.module] if node.module != "sdlib" else [f"sdlib.{a.name}" for a in node.names]
            for name in names:
                yield name, node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sdlib"):
                    yield alias.name, node.lineno, id(node) in top


def _resolve(name: str, known: set[str]) -> str:
    """``sdlib.train.config`` stays; ``sdlib.train`` names the package ``sdlib.train``."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _graph():
    modules = dict(_modules())
    known = set(modules)
    return {name: [(_resolve(imp, known), line, top) for imp, line, top in _imports(path, name)]
            for name, path in modules.items()}, modules


def test_every_module_has_a_layer():
    graph, _ = _graph()
    for name in graph:
        _layer(name)  # a KeyError names a module the layering does not place


def test_no_module_imports_from_a_layer_above_it():
    graph, modules = _graph()
    upward = [f"{modules[a].relative_to(SDLIB.parent)}:{line} imports {b} ({LAYERS[_layer(b)][0]} is above "
              f"{LAYERS[_layer(a)][0]})" for a, edges in graph.items() for b, line, _ in edges
              if _layer(b) > _layer(a) and not a.endswith("__init__")]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_circle():
    graph, _ = _graph()
    edges = {a: {b for b, _, _ in e if b != a and not (b == "sdlib" or a == "sdlib")} for a, e in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_sdlib_modules_are_imported_at_the_top_of_the_file():
    graph, modules = _graph()
    inside = [f"{modules[a].relative_to(SDLIB.parent)}:{line} imports {b} inside a function"
              for a, e in graph.items() for b, line, top in e if not top and b not in LAZY]
    assert not inside, f"{len(inside)} imports of sdlib modules inside functions:\n" + "\n".join(inside)


def test_every_function_reads_on_one_screen():
    """No function or method in sdlib/ runs to 60 lines (docstring included): a longer one does several jobs."""
    long = []
    for path in sorted(SDLIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= 60:
                long.append(f"{path.relative_to(SDLIB.parent)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "split these: " + "; ".join(long)
