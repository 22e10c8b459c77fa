"""Keep the code references of docs/EQUATIONS.md pointing at the right lines.

A code reference in the documentation has the exact form

    [`analysis/toy.py:56`](../analysis/toy.py#L56) `closed_form`

(a repository path and line inside backticks, linked to ``../path#Lline``, then the symbol in
backticks). The symbol is a function, class or module-level name, or ``Class.member`` for a method or
attribute of a class. A test reference has the form ``tests/test_toy.py::test_name``.

    python docs/refs.py            rewrite every code reference to its symbol's current line
    python docs/refs.py --check    list stale references (wrong line, missing file or symbol,
                                   missing test) and exit 1 if there are any

Symbols that cannot be found are printed and their references are left unchanged.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "EQUATIONS.md"

#: A code reference: link text ``path:line``, link target ``../path#Lline``, then `` `symbol` ``.
REF_RE = re.compile(
    r"\[`(?P<path>[\w./-]+):(?P<line>\d+)`\]"
    r"\(\.\./(?P<link_path>[\w./-]+)#L(?P<link_line>\d+)\)"
    r"\s`(?P<symbol>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)`"
)
#: A test reference: ``tests/....py::test_name`` inside backticks.
TEST_REF_RE = re.compile(r"`(?P<path>tests/[\w./-]+\.py)::(?P<name>test_\w+)`")


def find_refs(text: str) -> list[tuple[str, int, str]]:
    """Every code reference in ``text`` as ``(path, line, symbol)``, in order of appearance."""
    return [(m["path"], int(m["line"]), m["symbol"]) for m in REF_RE.finditer(text)]


def find_test_refs(text: str) -> list[tuple[str, str]]:
    """Every test reference in ``text`` as ``(path, test_name)``, in order of appearance."""
    return [(m["path"], m["name"]) for m in TEST_REF_RE.finditer(text)]


def _definition(name: str) -> re.Pattern:
    """A line that defines ``name``: ``def``/``class``, or an assignment/annotation ``name =``/``name:``."""
    n = re.escape(name)
    return re.compile(rf"^(?P<indent>[ \t]*)(?:(?:async[ \t]+)?def[ \t]+{n}\b|class[ \t]+{n}\b|{n}[ \t]*(?::|=(?!=)))")


def _read_lines(path: str | Path, root: Path = ROOT) -> list[str] | None:
    full = Path(path) if Path(path).is_absolute() else root / path
    try:
        return full.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None


def _find(lines: list[str], name: str, start: int = 0, stop: int | None = None,
          min_indent: int = 0) -> int | None:
    """Index of the best definition of ``name`` in ``lines[start:stop]`` whose indent is >= ``min_indent``.

    ``def`` and ``class`` win over assignments; among assignments the least indented wins (a
    module-level constant over a local variable); otherwise the first occurrence.
    """
    pattern = _definition(name)
    best = None   # (rank, index)
    for i in range(start, len(lines) if stop is None else stop):
        m = pattern.match(lines[i])
        if not m:
            continue
        indent = len(m["indent"].expandtabs(4))
        if indent < min_indent:
            continue
        body = lines[i][m.end("indent"):]
        rank = (0, 0) if body.startswith(("def", "async", "class")) else (1, indent)
        if best is None or rank < best[0]:
            best = (rank, i)
    return None if best is None else best[1]


def _block_end(lines: list[str], start: int) -> tuple[int, int]:
    """For the ``class`` line at ``start``: (index one past the class body, the class's indent)."""
    indent = len(lines[start]) - len(lines[start].lstrip())
    i = start + 1
    while i < len(lines):
        s = lines[i]
        if s.strip() and not s.lstrip().startswith("#") and len(s) - len(s.lstrip()) <= indent:
            break
        i += 1
    return i, indent


def resolve(path: str | Path, symbol: str, root: Path = ROOT) -> int | None:
    """The 1-based line of the definition of ``symbol`` in ``path`` (relative to the repository root).

    ``symbol`` is a plain name (``def symbol``, ``class symbol``, ``symbol =`` or ``symbol:`` at the
    start of a line after optional indentation) or ``Class.member`` (the member defined inside the
    body of ``class Class``). Returns None when the file or the symbol does not exist.
    """
    lines = _read_lines(path, root)
    if lines is None:
        return None
    if "." not in symbol:
        i = _find(lines, symbol)
        return None if i is None else i + 1
    owner, member = symbol.split(".", 1)
    start = _find(lines, owner)
    if start is None or not lines[start].lstrip().startswith("class"):
        return None
    end, indent = _block_end(lines, start)
    i = _find(lines, member, start + 1, end, min_indent=indent + 1)
    return None if i is None else i + 1


def has_test(path: str, name: str, root: Path = ROOT) -> bool:
    """Whether ``path`` (a test file) defines a test function ``name`` (at any indentation)."""
    lines = _read_lines(path, root)
    if lines is None:
        return False
    pattern = re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}\b")
    return any(pattern.match(line) for line in lines)


def _format(path: str, line: int, symbol: str) -> str:
    return f"[`{path}:{line}`](../{path}#L{line}) `{symbol}`"


def stale_refs(text: str, root: Path = ROOT) -> list[str]:
    """A description of every stale reference in ``text`` (empty when all are current)."""
    problems = []
    for m in REF_RE.finditer(text):
        path, line, symbol = m["path"], int(m["line"]), m["symbol"]
        where = f"{path}:{line} {symbol}"
        if m["link_path"] != path or int(m["link_line"]) != line:
            problems.append(f"{where}: link target ../{m['link_path']}#L{m['link_line']} disagrees with the text")
        if _read_lines(path, root) is None:
            problems.append(f"{where}: no such file")
            continue
        current = resolve(path, symbol, root)
        if current is None:
            problems.append(f"{where}: symbol not found")
        elif current != line:
            problems.append(f"{where}: now at line {current}")
    for path, name in find_test_refs(text):
        if not has_test(path, name, root):
            problems.append(f"{path}::{name}: no such test")
    return problems


def update_text(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """``text`` with every resolvable code reference moved to its symbol's current line.

    Returns the new text and the references that could not be resolved (left unchanged).
    """
    unresolved = []

    def replace(m: re.Match) -> str:
        path, symbol = m["path"], m["symbol"]
        line = resolve(path, symbol, root)
        if line is None:
            unresolved.append(f"{path}:{m['line']} {symbol}")
            return m.group(0)
        return _format(path, line, symbol)

    return REF_RE.sub(replace, text), unresolved


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Update or check the code references of docs/EQUATIONS.md.")
    parser.add_argument("--check", action="store_true", help="list stale references and exit 1 if any")
    parser.add_argument("files", nargs="*", type=Path, help=f"documents to process (default {DOC.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    status = 0
    for doc in args.files or [DOC]:
        text = doc.read_text(encoding="utf-8")
        if args.check:
            problems = stale_refs(text)
            for p in problems:
                print(f"{doc}: stale: {p}")
            if problems:
                status = 1
            else:
                print(f"{doc}: {len(find_refs(text))} code references and "
                      f"{len(find_test_refs(text))} test references are current")
            continue
        new, unresolved = update_text(text)
        for u in unresolved:
            print(f"{doc}: not found (left unchanged): {u}", file=sys.stderr)
        changed = sum(a != b for a, b in zip(find_refs(text), find_refs(new)))
        if new != text:
            _write_atomic(doc, new)
        print(f"{doc}: {changed} of {len(find_refs(new))} code references updated, {len(unresolved)} not found")
        missing = [f"{p}::{n}" for p, n in find_test_refs(new) if not has_test(p, n)]
        for t in missing:
            print(f"{doc}: no such test: {t}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
