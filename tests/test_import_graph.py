"""The package's import graph (every `from .x import` and `import moequant.x`, at module level or
inside a function): no cycle, and no module importing one from a layer above its own. The layers,
bottom first, are README's Layout section in order (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

import moequant

PACKAGE = Path(moequant.__file__).parent

LAYERS = (
    ("errors", "formats", "names", "heap"),  # value types and the C heap: nothing of moequant's but errors
    ("registry", "configmap"),  # what is known per model_type
    ("checkpoint", "target", "ignored"),  # reading SRC: headers, config, the target model
    ("dequant", "experts", "fpquant", "rounding", "gptq", "surgery"),  # tensors and modules
    ("plan",),  # deciding
    ("stored", "quantize", "evaluate", "allocate", "calibrate"),  # measuring and quantizing
    ("writer", "card", "plot"),  # output
    ("convert", "procpool", "_workerboot", "verify"),  # running a conversion, checking one
    ("tiny", "publish", "cli", "__main__", "__init__"),  # what users call
)
RANK = {name: n for n, layer in enumerate(LAYERS) for name in layer}


def _statements(tree: ast.AST):
    """Every node of the module but what stands under `if TYPE_CHECKING:` (names for annotations)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _statements(node)


def imports(path: Path) -> set[str]:
    """The moequant modules `path` imports, wherever the import statement stands (functions
    included: a lazy import is an import), except for type annotations only."""
    found = set()
    for node in _statements(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("moequant."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("moequant."))
    return found & set(RANK) - {"__init__"}


GRAPH = {p.stem: imports(p) for p in PACKAGE.glob("*.py")}


def test_every_module_has_a_layer():
    assert sorted(set(GRAPH) - set(RANK)) == []


def test_no_upward_import():
    upward = sorted(f"{a} (layer {RANK[a]}) imports {b} (layer {RANK[b]})"
                    for a, deps in GRAPH.items() for b in deps if RANK[b] > RANK[a])
    assert upward == []


def test_no_cycle():
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for b in GRAPH.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    assert sorted(a for a in GRAPH if a in reach(a)) == []
