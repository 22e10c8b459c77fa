"""The fingerprint of the code a result depends on.

A result is reused only while the code that computed it is unchanged. "The code" of a module is the
transitive closure of its imports inside this project (``miniattn`` and ``analysis``), found by
reading every ``import`` statement of each file (module level and inside functions, so lazy imports
count too) without executing anything. A file's contribution is the SHA-256 of its syntax tree
(:func:`ast.dump`) with docstrings removed: comments and docstrings are not in the tree, so editing
them changes nothing, while any change to the code does.

    fingerprint(M) = SHA-256( sorted over modules N in closure(M): name(N) ‖ SHA-256(ast(N) − docstrings) )

``python -m analysis.fingerprint MODULE`` prints a module's fingerprint and its closure.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sys
from pathlib import Path

__all__ = ["PROJECT_PACKAGES", "module_path", "module_closure", "source_hash", "fingerprint"]

#: Top-level packages whose code is fingerprinted (third-party code is identified by its version).
PROJECT_PACKAGES = ("miniattn", "analysis")
#: Modules that draw or render but never compute a result: not part of any fingerprint.
PRESENTATION_MODULES = ("analysis.plotting", "analysis.report")


def _root() -> Path:
    return Path(__file__).resolve().parents[1]


def module_path(name: str, root: Path | None = None) -> Path | None:
    """The file of project module ``name`` (``pkg/mod.py`` or ``pkg/mod/__init__.py``), or None."""
    base = (root or _root()).joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_project(name: str, packages) -> bool:
    return name.split(".")[0] in packages


def _imports(path: Path, name: str, root: Path, packages) -> set[str]:
    """Project modules imported anywhere in the file of module ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # ``from pkg import sub`` may name a submodule or an attribute: try both.
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for cand in candidates:
            if not _is_project(cand, packages):
                continue
            # Importing ``a.b.c`` executes ``a/__init__``, ``a/b/__init__`` and ``a/b/c``.
            parts = cand.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if module_path(prefix, root) is not None:
                    found.add(prefix)
    return found


def module_closure(name: str, root: Path | None = None, packages=PROJECT_PACKAGES,
                   exclude=PRESENTATION_MODULES) -> list[str]:
    """Sorted names of ``name`` and every project module it imports, directly or not."""
    root = root or _root()
    if module_path(name, root) is None:
        raise ValueError(f"no project module named {name!r} under {root}")
    seen: set[str] = set()
    parts = name.split(".")
    # Importing a.b.c runs a/__init__ and a/b/__init__ first: they are part of its code too.
    todo = [p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if module_path(p, root)]
    while todo:
        current = todo.pop()
        if current in seen or current in exclude:
            continue
        seen.add(current)
        path = module_path(current, root)
        if path is not None:
            todo.extend(_imports(path, current, root, packages) - seen)
    return sorted(seen)


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = getattr(node, "body", None)
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


def source_hash(text: str, filename: str = "<source>") -> str:
    """SHA-256 of the syntax tree of ``text`` without docstrings (comments and layout do not count)."""
    tree = _StripDocstrings().visit(ast.parse(text, filename=filename))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _text_hash(text: str, filename: str) -> str:
    return source_hash(text, filename)


def fingerprint(name: str, root: Path | None = None) -> str:
    """The code fingerprint of project module ``name`` (hex SHA-256; see the module docstring)."""
    root = root or _root()
    digest = hashlib.sha256()
    for mod in module_closure(name, root):
        path = module_path(mod, root)
        digest.update(f"{mod}\0{_text_hash(path.read_text(encoding='utf-8'), str(path))}\n".encode())
    return digest.hexdigest()


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print("usage: python -m analysis.fingerprint MODULE", file=sys.stderr)
        return 2
    try:
        closure = module_closure(args[0])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(fingerprint(args[0]))
    for mod in closure:
        print(f"  {module_path(mod).relative_to(_root())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
