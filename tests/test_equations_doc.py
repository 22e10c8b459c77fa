"""docs/EQUATIONS.md stays true to the code: every reference resolves and every quantity is there.

After code is edited, ``python docs/refs.py`` moves the code references to their symbols' current
lines; a failure here names the stale reference.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "EQUATIONS.md"


def _load_refs():
    spec = importlib.util.spec_from_file_location("docs_refs", ROOT / "docs" / "refs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


refs = _load_refs()
DOC = DOC_PATH.read_text(encoding="utf-8")
CODE_REFS = refs.find_refs(DOC)
TEST_REFS = refs.find_test_refs(DOC)


def _sections(text: str) -> list[str]:
    """The text split at every markdown heading of level 2 or 3 (each piece starts with its heading)."""
    return re.split(r"(?m)^(?=#{2,3} )", text)


def _test_functions(path: Path) -> set[str]:
    """Names of the test functions defined in a test file (module level or inside a class)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            names.add(node.name)
    return names


# --------------------------------------------------------------------------------------------------
# The references
# --------------------------------------------------------------------------------------------------

def test_the_document_has_code_and_test_references():
    assert len(CODE_REFS) >= 100
    assert len(TEST_REFS) >= 100
    # Every reference-looking link is in the exact form the script understands.
    loose = re.findall(r"\[`[^`\]]+:\d+`\]\([^)]*\)", DOC)
    assert len(loose) == len(CODE_REFS), "a code reference is not of the form [`p:n`](../p#Ln) `symbol`"


@pytest.mark.parametrize("path, line, symbol", sorted(set(CODE_REFS)), ids=lambda v: str(v))
def test_code_reference_points_at_the_definition(path, line, symbol):
    file = ROOT / path
    assert file.is_file(), f"{path} does not exist"
    lines = file.read_text(encoding="utf-8").splitlines()
    assert 1 <= line <= len(lines), f"{path} has {len(lines)} lines, the reference says {line}"
    name = symbol.rsplit(".", 1)[-1]
    text = lines[line - 1]
    assert re.match(rf"^\s*(?:(?:async\s+)?def\s+{name}\b|class\s+{name}\b|{name}\s*(?::|=(?!=)))", text), (
        f"{path}:{line} does not define {symbol}: {text.strip()!r} (run `python docs/refs.py`)")
    assert refs.resolve(path, symbol) == line, (
        f"{symbol} is defined at {path}:{refs.resolve(path, symbol)}, not {line} (run `python docs/refs.py`)")


def test_link_targets_agree_with_the_link_text():
    for m in refs.REF_RE.finditer(DOC):
        assert m["link_path"] == m["path"] and m["link_line"] == m["line"], m.group(0)


@pytest.mark.parametrize("path, name", sorted(set(TEST_REFS)), ids=lambda v: str(v))
def test_test_reference_names_an_existing_test(path, name):
    file = ROOT / path
    assert file.is_file(), f"{path} does not exist"
    assert name in _test_functions(file), f"{path} has no test function {name}"


def test_check_mode_reports_the_document_current():
    assert refs.stale_refs(DOC) == []


# --------------------------------------------------------------------------------------------------
# The quantities
# --------------------------------------------------------------------------------------------------

#: Quantity -> a pattern that must occur in a heading or an equation of the document.
QUANTITIES = {
    "attention α": r"### [\d.]+ Attention α",
    "KTIW probe β": r"### [\d.]+ KTIW probe β",
    "β^uf": r"### [\d.]+ β\^uf",
    "β^px (regression)": r"### [\d.]+ β\^px from a bag-of-words regression",
    "β^px (closed form)": r"### [\d.]+ β\^px in closed form",
    "saliency Δ": r"### [\d.]+ Saliency Δ",
    "agreement A": r"### [\d.]+ Agreement A\(a, b\)",
    "shuffled baseline Â": r"### [\d.]+ The shuffled baseline Â",
    "Kendall τ": r"### [\d.]+ Kendall τ",
    "ξ": r"### [\d.]+ ξ\(v\) and ξ\*",
    "δ": r"δ = m_d − m_o,\s+u = a_d − a_o",
    "α_d": r"α_d = e\^\{a_d\}/\(e\^\{a_d\} \+ \(L − 1\)e\^\{a_o\}\)",
    "the reduced loss": r"ℓ\(δ, α_d\) = −δ α_d \+ log\(e\^\{δ α_d\} \+ \(L − 1\) e\^\{δ α_o\} \+ \(V − L\)\)",
    "the toy flow": r"## 5 The warm-up toy flow",
    "the stage-2 prediction": r"## 8 The stage-2 prediction",
}


@pytest.mark.parametrize("quantity", sorted(QUANTITIES))
def test_quantity_is_documented_with_code_and_test(quantity):
    pattern = re.compile(QUANTITIES[quantity])
    hits = [s for s in _sections(DOC) if pattern.search(s)]
    assert hits, f"{quantity} does not appear in docs/EQUATIONS.md"
    section = hits[0]
    assert refs.find_refs(section), f"the section of {quantity} has no code reference"
    assert refs.find_test_refs(section), f"the section of {quantity} has no test reference"


def test_toy_flow_equations_are_all_listed():
    for equation in ["L = p(β₀ − β₁)", "dβ₁/dτ = p", "dβ₀/dτ = −p", "dp/dτ = β₁ − β₀",
                     "p(τ) = ½cosh(√2τ)", "β₁ − β₀ = (√2/2) sinh(√2τ)", "p(0.5) ≈ 0.630",
                     "p(1) ≈ 1.089", "p(2) ≈ 4.244", "≈ 0.931", "dp/dτ(0) = β₁ − β₀ = −20",
                     "loss = −2K"]:
        assert equation in DOC, equation


def test_toy_flow_derivation_lives_in_one_place():
    # The line-by-line derivation is in analysis/README.md §1; this page links to it and lists results.
    readme = (ROOT / "analysis" / "README.md").read_text(encoding="utf-8")
    assert "dS/dτ" in readme and "dS/dτ" not in DOC
    assert "](../analysis/README.md#1-the-warm-up-toy" in DOC
    heading = next(line for line in readme.splitlines() if line.startswith("## 1."))
    slug = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")
    assert f"](../analysis/README.md#{slug})" in DOC, f"the link to {heading!r} has the wrong anchor"


# --------------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------------

def test_resolve_finds_definitions_of_each_kind(tmp_path):
    (tmp_path / "m.py").write_text(
        "X = 1\n"
        "def f():\n"
        "    X = 2\n"
        "    return X\n"
        "class C:\n"
        "    y: int = 3\n"
        "    def f(self):\n"
        "        pass\n"
        "\n"
        "    async def g(self):\n"
        "        pass\n"
        "class D:\n"
        "    def h(self):\n"
        "        pass\n"
        "Z == 1\n", encoding="utf-8")
    assert refs.resolve("m.py", "X", tmp_path) == 1        # the module-level name, not the local one
    assert refs.resolve("m.py", "f", tmp_path) == 2        # def wins over nothing; first def
    assert refs.resolve("m.py", "C", tmp_path) == 5
    assert refs.resolve("m.py", "C.y", tmp_path) == 6
    assert refs.resolve("m.py", "C.f", tmp_path) == 7
    assert refs.resolve("m.py", "C.g", tmp_path) == 10
    assert refs.resolve("m.py", "C.h", tmp_path) is None   # h belongs to D
    assert refs.resolve("m.py", "D.h", tmp_path) == 13
    assert refs.resolve("m.py", "Z", tmp_path) is None     # a comparison is not a definition
    assert refs.resolve("m.py", "missing", tmp_path) is None
    assert refs.resolve("nope.py", "X", tmp_path) is None


def test_find_refs_and_rewrite_round_trip(tmp_path):
    line = refs.resolve("analysis/toy.py", "closed_form")
    doc = tmp_path / "doc.md"
    doc.write_text("a [`analysis/toy.py:3`](../analysis/toy.py#L3) `closed_form` and "
                   "[`analysis/toy.py:1`](../analysis/toy.py#L1) `no_such_symbol`, "
                   "`tests/test_toy.py::test_closed_form_reference_values`\n", encoding="utf-8")
    text = doc.read_text(encoding="utf-8")
    assert refs.find_refs(text) == [("analysis/toy.py", 3, "closed_form"), ("analysis/toy.py", 1, "no_such_symbol")]
    assert refs.find_test_refs(text) == [("tests/test_toy.py", "test_closed_form_reference_values")]
    assert refs.main(["--check", str(doc)]) == 1
    assert refs.main([str(doc)]) == 0
    new = doc.read_text(encoding="utf-8")
    # The known symbol moved to its line; the unknown one is left exactly as it was.
    assert f"[`analysis/toy.py:{line}`](../analysis/toy.py#L{line}) `closed_form`" in new
    assert "[`analysis/toy.py:1`](../analysis/toy.py#L1) `no_such_symbol`" in new
    doc.write_text(new.replace("`no_such_symbol`", "`hitting_time`"), encoding="utf-8")
    assert refs.main([str(doc)]) == 0
    assert refs.main(["--check", str(doc)]) == 0
    doc.write_text(doc.read_text(encoding="utf-8") + "`tests/test_toy.py::test_does_not_exist`\n", encoding="utf-8")
    assert refs.main(["--check", str(doc)]) == 1
