"""The test tree's import boundary (issue 15 item 6c): no test module imports another test module or a
conftest, whatever they share lives in tests/support (plain functions and classes; fixtures stay in the
conftest.py files), and nothing under bench/ imports the tests.

Every import counts: one inside a function or under `if TYPE_CHECKING:`, a relative one, and
`importlib.import_module("...")`, `__import__("...")` and `pytest_plugins` with literal names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SUPPORT = "tests.support"

# (file, module) imports that cross the boundary knowingly, with the reason. An entry must still be
# needed: test_every_known_exception_is_still_needed fails once the import is gone.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _imports(node: ast.AST, module_name: str, is_package: bool) -> Iterator[str]:
    """The dotted names `node` imports, `from M import n` as `M.n` (n may be a module or an attribute)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module_name.split(".") if is_package else module_name.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        for alias in node.names:
            yield base if alias.name == "*" else f"{base}.{alias.name}"
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
            yield node.args[0].value
    elif isinstance(node, ast.Assign) and any(
        isinstance(target, ast.Name) and target.id == "pytest_plugins" for target in node.targets
    ):
        for item in ast.walk(node.value):
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                yield item.value


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _names_a_test_module_or_conftest(name: str) -> bool:
    """Also when named without the `tests.` prefix (as a rootdir-relative import would)."""
    return any(part == "conftest" or part.startswith("test_") for part in name.split("."))


def crossings(repo: Path) -> list[tuple[str, int, str]]:
    """(file, line, imported name) of every import in the .py files under repo/tests and repo/bench
    that crosses the boundary: from tests, anything of tests but tests.support (and any test module or
    conftest by another name); from bench, anything of tests at all."""
    found = []
    for root in (repo / "tests", repo / "bench"):
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(repo)
            module_name = ".".join(rel.with_suffix("").parts)
            in_bench = rel.parts[0] == "bench"
            for node in ast.walk(ast.parse(path.read_text(), filename=str(rel))):
                for name in _imports(node, module_name, path.name == "__init__.py"):
                    if _within(name, "tests"):
                        crosses = in_bench or not _within(name, SUPPORT)
                    else:
                        crosses = _names_a_test_module_or_conftest(name)
                    if crosses:
                        found.append((rel.as_posix(), getattr(node, "lineno", 0), name))
    return sorted(found)


def _known(rel: str, name: str) -> bool:
    return any(rel == file and _within(name, module) for file, module in KNOWN_EXCEPTIONS)


def test_no_test_imports_another_test_module_and_bench_imports_no_tests() -> None:
    unexpected = [(rel, line, name) for rel, line, name in crossings(REPO_ROOT) if not _known(rel, name)]
    assert not unexpected, "move what these share into tests/support (fixtures into a conftest.py):\n" + (
        "\n".join(f"{rel}:{line}: imports {name}" for rel, line, name in unexpected)
    )


def test_every_known_exception_is_still_needed() -> None:
    found = crossings(REPO_ROOT)
    stale = [
        entry
        for entry in KNOWN_EXCEPTIONS
        if not any(rel == entry[0] and _within(name, entry[1]) for rel, _, name in found)
    ]
    assert not stale, f"no longer imported: remove {stale} from KNOWN_EXCEPTIONS"


def test_the_check_names_each_kind_of_crossing(tmp_path: Path) -> None:
    """The check itself, on a tree written for it (outside tests/, so never collected)."""
    (tmp_path / "tests" / "api").mkdir(parents=True)
    (tmp_path / "bench").mkdir()
    (tmp_path / "tests" / "api" / "test_bad.py").write_text(
        "from tests.conftest import create_job\n"
        "from tests.support.factories import create_tenant\n"
        "from . import test_other\n"
        "from .conftest import headers\n"
        "from tests import support, session_servers\n"
        "\n"
        "def helper():\n"
        "    import tests.worker.test_runner\n"
        "    importlib.import_module('tests.api.test_ingest')\n"
    )
    (tmp_path / "tests" / "conftest.py").write_text("pytest_plugins = ['tests.worker.conftest']\n")
    (tmp_path / "bench" / "bad.py").write_text("import core\nfrom tests.support.servers import SeaweedFS\n")

    assert crossings(tmp_path) == [
        ("bench/bad.py", 2, "tests.support.servers.SeaweedFS"),
        ("tests/api/test_bad.py", 1, "tests.conftest.create_job"),
        ("tests/api/test_bad.py", 3, "tests.api.test_other"),
        ("tests/api/test_bad.py", 4, "tests.api.conftest.headers"),
        ("tests/api/test_bad.py", 5, "tests.session_servers"),
        ("tests/api/test_bad.py", 8, "tests.worker.test_runner"),
        ("tests/api/test_bad.py", 9, "tests.api.test_ingest"),
        ("tests/conftest.py", 1, "tests.worker.conftest"),
    ]
