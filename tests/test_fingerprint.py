"""Tests of the code fingerprint (analysis.fingerprint) on a copy of the project's own packages.

A stored run is reused only while the fingerprint of its experiment's code is unchanged, so the
fingerprint must ignore comments and docstrings, change with any code edit inside the experiment's
import closure, and not change with edits outside it.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.experiments.registry import EXPERIMENTS
from analysis.fingerprint import PRESENTATION_MODULES, fingerprint, module_closure, module_path

REPO = Path(__file__).resolve().parents[1]
E1 = "analysis.experiments.e1_toy"
E4 = "analysis.experiments.e4_copy"


@pytest.fixture
def tree(tmp_path) -> Path:
    """A private copy of the real ``miniattn`` and ``analysis`` packages (no byte code)."""
    for pkg in ("miniattn", "analysis"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _file(root: Path, module: str) -> Path:
    path = module_path(module, root)
    assert path is not None, module
    return path


def _prints(root: Path, modules) -> dict[str, str]:
    return {m: fingerprint(m, root=root) for m in modules}


def _edit_module_docstring(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    before = ast.get_docstring(ast.parse(text))
    assert before is not None and text.lstrip().startswith('"""'), f"{path} has no leading docstring"
    new = text.replace('"""', '"""Edited wording. ', 1)
    assert ast.get_docstring(ast.parse(new)) != before
    path.write_text(new, encoding="utf-8")


def _edit_function_docstring(path: Path) -> None:
    """Insert words into the docstring of the first function or class that has one."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    node = next(n for n in ast.walk(tree)
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(n) is not None)
    lines = text.splitlines(keepends=True)
    i = node.body[0].lineno - 1
    quote = '"""' if '"""' in lines[i] else "'''"
    assert quote in lines[i]
    lines[i] = lines[i].replace(quote, quote + "Reworded. ", 1)
    new = "".join(lines)
    changed = next(n for n in ast.walk(ast.parse(new))
                   if isinstance(n, type(node)) and n.name == node.name)
    assert ast.get_docstring(changed) != ast.get_docstring(node)
    path.write_text(new, encoding="utf-8")


def _edit_comment(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # A new comment line and a comment at the end of the first import line.
    text = text.replace("\nimport ", "\n# a comment that means nothing\nimport ", 1)
    text += "\n# trailing comment, edited\n"
    path.write_text(text, encoding="utf-8")


def _edit_code(path: Path) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n\ndef _unused():\n    return 1\n")


def _separating(root: Path, preferred: tuple[str, str, str]) -> tuple[str, str, str]:
    """(module, experiment that imports it, experiment that does not): the preferred triple when the
    closures agree with it, else any module of the registry that separates two experiments."""
    mod, inside, outside = preferred
    closures = {e.module: module_closure(e.module, root) for e in EXPERIMENTS}
    if mod in closures.get(inside, []) and mod not in closures.get(outside, []):
        return preferred
    own = {e.module for e in EXPERIMENTS}
    candidates = []
    for a in closures:
        for b in closures:
            for m in sorted(set(closures[a]) - set(closures[b])):
                candidates.append((m in own, m, a, b))  # prefer a shared library module
    assert candidates, "no module separates any two experiments"
    _, m, a, b = min(candidates)
    return m, a, b


@pytest.mark.parametrize("edit", [_edit_comment, _edit_module_docstring, _edit_function_docstring],
                         ids=["comment", "module-docstring", "function-docstring"])
@pytest.mark.parametrize("module", ["analysis.toy", "miniattn.layers"])
def test_comment_and_docstring_edits_change_no_fingerprint(tree, module, edit):
    experiments = [E1, E4]
    before = _prints(tree, experiments)
    path = _file(tree, module)
    old = path.read_text(encoding="utf-8")
    edit(path)
    assert path.read_text(encoding="utf-8") != old
    assert _prints(tree, experiments) == before


def test_code_edit_changes_only_the_experiments_that_import_it(tree):
    mod, inside, outside = _separating(tree, ("analysis.toy", E1, E4))
    assert mod in module_closure(inside, tree) and mod not in module_closure(outside, tree)
    experiments = [e.module for e in EXPERIMENTS]
    before = _prints(tree, experiments)
    _edit_code(_file(tree, mod))
    after = _prints(tree, experiments)
    assert after[inside] != before[inside]
    assert after[outside] == before[outside]
    # Every experiment whose closure holds the module changes; every other one does not.
    for m in experiments:
        assert (after[m] != before[m]) == (mod in module_closure(m, tree)), m


def test_code_edit_of_a_shared_module_changes_both(tree):
    shared = "miniattn.layers"
    if not (shared in module_closure(E1, tree) and shared in module_closure(E4, tree)):
        shared = sorted(set(module_closure(E1, tree)) & set(module_closure(E4, tree)) - {"analysis", "miniattn"})[0]
    before = _prints(tree, [E1, E4])
    _edit_code(_file(tree, shared))
    after = _prints(tree, [E1, E4])
    assert after[E1] != before[E1] and after[E4] != before[E4]


def test_fingerprint_does_not_depend_on_the_location(tree):
    # Module names and syntax trees only: the same files elsewhere have the same fingerprint.
    elsewhere = tree / "elsewhere"
    for pkg in ("miniattn", "analysis"):
        shutil.copytree(tree / pkg, elsewhere / pkg)
    for m in (E1, E4):
        assert fingerprint(m, root=elsewhere) == fingerprint(m, root=tree), m
        assert module_closure(m, elsewhere) == module_closure(m, tree)


def test_lazy_and_relative_imports_are_followed(tmp_path):
    files = {
        "pkg/__init__.py": '"""Top."""\n',
        "pkg/a.py": ("import numpy as np\n\n"
                     "def f():\n    from . import b   # lazy and relative\n    return b\n\n"
                     "class K:\n    def m(self):\n        import pkg.e\n        return pkg.e\n"),
        "pkg/b.py": "from .sub import c\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from .. import d\nfrom ..d import VALUE\nfrom pkg import not_a_module_attr\n",
        "pkg/d.py": "VALUE = 1\nnot_a_module_attr = 2\n",
        "pkg/e.py": "def g():\n    from .sub.deep import x\n",
        "pkg/sub/deep.py": "x = 1\n",
        "pkg/unused.py": "import pkg.a\n",
        "other/__init__.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    closure = module_closure("pkg.a", tmp_path, packages=("pkg",))
    assert closure == ["pkg", "pkg.a", "pkg.b", "pkg.d", "pkg.e", "pkg.sub", "pkg.sub.c", "pkg.sub.deep"]
    assert "pkg.unused" not in closure and "other" not in closure
    with pytest.raises(ValueError, match="no project module"):
        module_closure("pkg.missing", tmp_path, packages=("pkg",))


def test_closure_includes_the_parent_packages_of_its_own_module(tmp_path):
    # Importing pkg.sub.c executes pkg/__init__.py and pkg/sub/__init__.py before pkg/sub/c.py.
    for rel, text in {"pkg/__init__.py": "", "pkg/sub/__init__.py": "X = 1\n", "pkg/sub/c.py": "Y = 2\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert module_closure("pkg.sub.c", tmp_path, packages=("pkg",)) == ["pkg", "pkg.sub", "pkg.sub.c"]


def test_plotting_is_in_no_closure_and_does_not_count(tree):
    # The experiments do import the plotting module (lazily, for their figures) ...
    assert any("analysis.plotting" in module_closure(e.module, tree, exclude=()) for e in EXPERIMENTS)
    # ... but it is not part of any experiment's code.
    for e in EXPERIMENTS:
        closure = module_closure(e.module)
        for presentation in PRESENTATION_MODULES:
            assert presentation not in closure, (e.id, presentation)
    before = _prints(tree, [E1, E4])
    _edit_code(_file(tree, "analysis.plotting"))
    assert _prints(tree, [E1, E4]) == before


def test_make_deps_lists_every_experiment_and_existing_files():
    out = subprocess.run([sys.executable, "-m", "analysis.experiments", "make-deps"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    variables = dict(re.findall(r"^(\w+) := ?(.*)$", out, flags=re.M))
    assert variables["REPRO_IDS"].split() == [e.id for e in EXPERIMENTS]
    deps = {k[len("REPRO_DEPS_"):]: v.split() for k, v in variables.items() if k.startswith("REPRO_DEPS_")}
    assert sorted(deps) == sorted(e.id for e in EXPERIMENTS)
    for e in EXPERIMENTS:
        files = deps[e.id]
        assert files, e.id
        for f in files:
            assert (REPO / f).is_file(), (e.id, f)
        assert module_path(e.module).relative_to(REPO).as_posix() in files
        assert "analysis/plotting.py" not in files
        expected = [module_path(m).relative_to(REPO).as_posix() for m in module_closure(e.module)]
        assert files == expected
        assert variables[f"REPRO_MODULE_{e.id}"] == e.module


def test_the_registry_is_in_no_experiments_code():
    """Registering an experiment (editing the registry) must not recompute the others."""
    for e in EXPERIMENTS:
        closure = module_closure(e.module)
        assert "analysis.experiments.registry" not in closure, e.module
        assert "analysis.experiments.framework" not in closure, e.module
