"""The code runs on every Python that ``requires-python`` admits.

The suite itself runs on one interpreter; these tests read every module of src/, tests/
and benchmarks/ and refuse what an older admitted Python lacks (or a newer one removed):
syntax newer than the oldest admitted version (``except*``, ...), standard-library
modules and names added later (``tomllib``, ``typing.Self``, ``enum.StrEnum``, ...)
unless guarded by ``if sys.version_info >= (3, N):`` or ``try: ... except ImportError:``.
Ruff's ``target-version`` checks syntax, not what the standard library holds.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

#: Standard-library modules added after 3.10, with the version that added them.
NEW_MODULES = {"tomllib": (3, 11), "wsgiref.types": (3, 11)}

#: Modules removed from the standard library, with the version that removed them.
REMOVED_MODULES = {
    **dict.fromkeys(["asynchat", "asyncore", "distutils", "imp", "smtpd"], (3, 12)),
    **dict.fromkeys(
        "aifc audioop cgi cgitb chunk crypt imghdr lib2to3 mailcap msilib nis nntplib "
        "ossaudiodev pipes sndhdr spwd sunau telnetlib uu xdrlib".split(),
        (3, 13),
    ),
}

#: Names added to standard-library modules after 3.10 ("builtins" for built-in names).
NEW_NAMES: dict[str, dict[str, tuple[int, int]]] = {
    "typing": {
        **dict.fromkeys(
            "Self LiteralString Never assert_never assert_type reveal_type Required "
            "NotRequired TypeVarTuple Unpack dataclass_transform get_overloads "
            "clear_overloads".split(),
            (3, 11),
        ),
        **dict.fromkeys(["override", "TypeAliasType"], (3, 12)),
        **dict.fromkeys(["ReadOnly", "TypeIs", "NoDefault", "is_protocol"], (3, 13)),
    },
    "enum": dict.fromkeys(
        "StrEnum ReprEnum EnumCheck FlagBoundary verify member nonmember global_enum "
        "show_flag_values".split(),
        (3, 11),
    ),
    "datetime": {"UTC": (3, 11)},
    "hashlib": {"file_digest": (3, 11)},
    "asyncio": dict.fromkeys(["TaskGroup", "timeout", "timeout_at", "Runner", "Barrier"], (3, 11)),
    "contextlib": {"chdir": (3, 11)},
    "operator": {"call": (3, 11)},
    "math": {"cbrt": (3, 11), "exp2": (3, 11), "sumprod": (3, 12), "fma": (3, 13)},
    "itertools": {"batched": (3, 12)},
    "inspect": {"getmembers_static": (3, 11), "markcoroutinefunction": (3, 12)},
    "logging": {"getLevelNamesMapping": (3, 11), "getHandlerByName": (3, 12)},
    "re": {"NOFLAG": (3, 11)},
    "sys": {"exception": (3, 11)},
    "types": {"get_original_bases": (3, 12)},
    "warnings": {"deprecated": (3, 13)},
    "copy": {"replace": (3, 13)},
    "builtins": {"ExceptionGroup": (3, 11), "BaseExceptionGroup": (3, 11)},
}


def oldest_python() -> tuple[int, int]:
    """The oldest version ``requires-python`` admits (``>=3.10`` -> ``(3, 10)``)."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    found = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec.strip())
    assert found, f"requires-python {spec!r}: expected the form '>=3.N'"
    return int(found[1]), int(found[2])


def _version_test(test: ast.expr) -> tuple[str, tuple[int, int]] | None:
    """``sys.version_info >= (3, 11)`` -> ``(">=", (3, 11))``; anything else -> None."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, right = test.left, test.comparators[0]
    if not (ast.unparse(left) == "sys.version_info" and isinstance(right, ast.Tuple)):
        return None
    try:
        major, minor = (ast.literal_eval(e) for e in right.elts[:2])
    except (ValueError, TypeError):
        return None
    op = {ast.GtE: ">=", ast.Gt: ">", ast.Lt: "<", ast.LtE: "<="}.get(type(test.ops[0]))
    if op in (">", "<="):  # > (3, 10) is >= (3, 11) for these tuples; <= (3, 10) is < (3, 11)
        op, minor = {">": ">=", "<=": "<"}[op], minor + 1
    return (op, (major, minor)) if op else None


class _Checker(ast.NodeVisitor):
    """Collects ``line: problem`` for what ``oldest`` lacks or a newer Python removed."""

    def __init__(self, oldest: tuple[int, int]) -> None:
        self.oldest = oldest
        self.at_least = oldest  # the Python version the current branch runs on, at least
        self.below: tuple[int, int] | None = None  # ... and below, where a guard says so
        self.guarded = 0  # inside try: ... except ImportError
        self.modules: dict[str, str] = {}  # local name -> module it names
        self.problems: list[str] = []

    def _need(self, node: ast.AST, what: str, added: tuple[int, int]) -> None:
        if added > self.at_least and not self.guarded:
            self.problems.append(f"{node.lineno}: {what} needs Python {added[0]}.{added[1]}")

    def _gone(self, node: ast.AST, module: str) -> None:
        removed = REMOVED_MODULES.get(module.split(".")[0])
        if removed and not self.guarded and (self.below is None or self.below > removed):
            self.problems.append(f"{node.lineno}: {module} is gone in {removed[0]}.{removed[1]}")

    def _module(self, node: ast.AST, module: str) -> None:
        self._gone(node, module)
        for name, added in NEW_MODULES.items():
            if module == name or module.startswith(name + "."):
                self._need(node, f"import {module}", added)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(node, alias.name)
            if alias.asname:
                self.modules[alias.asname] = alias.name
            else:
                self.modules[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return
        self._module(node, node.module)
        for alias in node.names:
            self._module(node, f"{node.module}.{alias.name}")
            added = NEW_NAMES.get(node.module, {}).get(alias.name)
            if added:
                self._need(node, f"from {node.module} import {alias.name}", added)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.modules:
            module = self.modules[node.value.id]
            added = NEW_NAMES.get(module, {}).get(node.attr)
            if added:
                self._need(node, f"{module}.{node.attr}", added)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        added = NEW_NAMES["builtins"].get(node.id)
        if added and node.id not in self.modules:
            self._need(node, f"built-in {node.id}", added)

    def visit_If(self, node: ast.If) -> None:
        test = _version_test(node.test)
        if test is None:
            self.generic_visit(node)
            return
        op, version = test
        self.visit(node.test)
        newer, older = (node.body, node.orelse) if op == ">=" else (node.orelse, node.body)
        saved = self.at_least, self.below
        self.at_least = max(self.at_least, version)
        for stmt in newer:
            self.visit(stmt)
        self.at_least, self.below = saved[0], version
        for stmt in older:
            self.visit(stmt)
        self.at_least, self.below = saved

    def visit_Try(self, node: ast.Try) -> None:
        caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
        fallback = bool(caught & {"ImportError", "ModuleNotFoundError"})
        self.guarded += fallback
        for stmt in node.body:
            self.visit(stmt)
        self.guarded -= fallback
        for part in (node.handlers, node.orelse, node.finalbody):
            for stmt in part:
                self.visit(stmt)


def problems(source: str, oldest: tuple[int, int], name: str = "<test>") -> list[str]:
    """What in ``source`` an interpreter of version ``oldest`` (or a later one) cannot run."""
    try:
        tree = ast.parse(source, name, feature_version=oldest)
    except SyntaxError as err:
        return [f"{err.lineno}: {err.msg}"]
    checker = _Checker(oldest)
    checker.visit(tree)
    return checker.problems


def _sources() -> list[Path]:
    found = [p for d in ("src", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    return sorted(p for p in found if ".venv" not in p.parts)


def test_requires_python_is_the_oldest_version_ruff_targets():
    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    major, minor = oldest_python()
    assert ruff["target-version"] == f"py{major}{minor}"


def test_every_module_runs_on_the_oldest_admitted_python():
    oldest = oldest_python()
    found = [
        f"{path.relative_to(ROOT)}:{problem}"
        for path in _sources()
        for problem in problems(path.read_text(), oldest, str(path))
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import tomllib\n",
        "from typing import Self\n",
        "import enum\nclass C(enum.StrEnum): pass\n",
        "import datetime as dt\nnow = dt.datetime.now(dt.UTC)\n",
        "try:\n    pass\nexcept* ValueError:\n    pass\n",
        "raise ExceptionGroup('x', [ValueError()])\n",
        "if sys.version_info >= (3, 10):\n    import tomllib\n",
        "import imp\n",
    ],
)
def test_the_check_refuses_what_3_10_lacks(source):
    assert problems(source, (3, 10))


@pytest.mark.parametrize(
    "source",
    [
        "if sys.version_info >= (3, 11):\n    import tomllib\nelse:\n    import tomli as tomllib\n",
        "if sys.version_info < (3, 11):\n    import tomli as tomllib\nelse:\n    import tomllib\n",
        "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli as tomllib\n",
        "from typing_extensions import Self\nimport datetime\nz = datetime.timezone.utc\n",
        "if sys.version_info < (3, 12):\n    import imp\n",
    ],
)
def test_the_check_accepts_guarded_and_older_code(source):
    assert problems(source, (3, 10)) == []
