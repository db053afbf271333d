"""The layering of ARCHITECTURE.md holds: import-linter's contracts in pyproject.toml are kept, no module
imports run in a circle (not even for type hints), and no module is named like one of codexlb's packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

import codexlb

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(codexlb.__file__).parent


def test_the_layers_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_import_circles():
    graph = grimp.build_graph("codexlb", cache_dir=None)
    circles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                circles.append(" -> ".join((module, *chain)))
    assert not circles, "\n".join(circles)


def test_no_module_is_named_like_a_package():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    clashes = sorted(str(m.relative_to(PACKAGE)) for m in PACKAGE.rglob("*.py")
                     if m.stem in packages and m.parent != PACKAGE / m.stem)
    assert not clashes, f"modules named like a package of codexlb ({', '.join(sorted(packages))}): {clashes}"
