"""The repository's shape: imports run downward only, and the README names files that exist."""
import ast
import os
import re
import subprocess
import sys

from conftest import ROOT

PACKAGES = ["tools", "train", "models", "data", "utils"]  # a module imports only from its own level or below


def imports_of(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # `from utils import dist`


def modules():
    yield "train", os.path.join(ROOT, "train.py")
    for package in [p for p in PACKAGES if p != "train"]:
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py"):
                yield f"{package}.{name[:-3]}", os.path.join(ROOT, package, name)


def test_imports_never_reach_a_level_above_their_own():
    upward = []
    for module, path in modules():
        level = PACKAGES.index(module.split(".")[0])
        for imported in imports_of(path):
            top = imported.split(".")[0]
            if top in PACKAGES and PACKAGES.index(top) < level:
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_imports_have_no_cycle():
    graph = {}
    for module, path in modules():
        targets = set()
        for imported in imports_of(path):
            targets |= {m for m, _ in modules() if m == imported}
        graph[module] = targets - {module}

    def visit(node, stack):
        assert node not in stack, " -> ".join(stack + [node])
        for nxt in graph[node]:
            visit(nxt, stack + [node])
    for module in graph:
        visit(module, [])


def test_readme_is_short_and_every_path_it_names_exists():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert len(text.splitlines()) <= 230  # for users; history and sweeps go to docs/results.md
    named = set(re.findall(r"`([\w./+-]+\.(?:py|yaml|ipynb|md|txt|yml))`", text))
    named |= set(re.findall(r"\]\(([\w./-]+)\)", text))  # markdown links
    missing = [p for p in sorted(named)
               if not any(os.path.exists(os.path.join(ROOT, d, p)) for d in ("", "configs"))
               and not p.startswith(("logs/", "checkpoint", "backbone", "params", "log.txt", "logs.csv", "nonfinite",
                                           "unreadable", "label_subset", "done"))]
    assert missing == []
    assert "configs/" in text and not re.search(r"\.\./shared|METHODS\.md", text)


def test_importing_train_loads_no_heavy_library():
    """Every run and every spawned rank imports train.py: torchvision (its ops import torch._dynamo and sympy),
    TorchCodec, pandas and exman are imported only by the code paths that use them."""
    code = "import sys, train; print(' '.join(m for m in ('torchvision', 'torchcodec', 'pandas', 'exman', 'sympy') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == []
