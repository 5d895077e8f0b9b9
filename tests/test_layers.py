"""The shape of the code: what the contract and the device runtimes may import, and no cycles.

The direction between components is import-linter's (``[tool.importlinter]`` in pyproject,
run by ``make lint``); these tests add what it does not check: which third-party packages the
torch-free layers may use, and that no module imports itself back through others.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp  # ships with import-linter (the dev extra)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edgeship", "converter", "edge_agent", "rollout_server", "monitoring", "examples", "benchmarks")


def top_level_imports(package: str) -> dict[str, set[str]]:
    """Top-level names each module of ``package`` imports, lazy imports inside functions too."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def outside(imports: dict[str, set[str]], allowed: set[str]) -> dict[str, set[str]]:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    return {
        where: bad
        for where, names in imports.items()
        if (bad := {n for n in names if n.split(".")[0] not in stdlib and not _within(n, allowed)})
    }


def _within(name: str, allowed: set[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def test_the_contract_imports_only_the_standard_library_numpy_and_cryptography():
    allowed = {"numpy", "cryptography", "edgeship.contract"}
    assert outside(top_level_imports("edgeship.contract"), allowed) == {}


def test_device_runtimes_import_only_the_contract_and_their_own_runtime():
    runtimes = {"onnxruntime", "ai_edge_litert", "tflite_runtime", "tensorflow", "coremltools", "openvino",
                "MNN", "executorch"}
    allowed = {"numpy", "edgeship.contract", "edgeship.runtimes", *runtimes}
    found = outside(top_level_imports("edgeship.runtimes"), allowed)
    # ExecuTorch's Python runtime takes torch tensors: its runner, the converter's alone (no agent
    # announces executorch), is the one runtime module that may import torch
    assert found.pop("edgeship/runtimes/executorch.py", set()) <= {"torch"}
    assert found == {}


def test_the_agent_imports_no_toolchain_and_no_server():
    # cryptography is an agent dependency already (signatures); transport.py reads a key pin with it
    allowed = {"numpy", "cryptography", "edgeship.contract", "edgeship.runtimes", "edge_agent"}
    assert outside(top_level_imports("edge_agent"), allowed) == {}


def test_no_module_imports_itself_back_through_others():
    graph = grimp.build_graph(*PACKAGES)
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def _strongly_connected(graph) -> list[set[str]]:
    """Tarjan's components of the import graph, iteratively (the graph has ~200 modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components
