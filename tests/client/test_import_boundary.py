"""The SDK and the `mapo` CLI speak REST only: they import no server code, so they install and run without
it. Each check runs in a fresh interpreter, where sys.modules shows everything an import pulled in."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from setuptools import find_packages

from tests.support.commands import REPO_ROOT

SERVER_PACKAGES = ("core", "api", "worker", "migrations", "ops", "sqlalchemy", "alembic", "fastapi", "celery")
HEAVY_PACKAGES = ("torch",)


def imported_after(code: str) -> set[str]:
    """The top-level packages of SERVER_PACKAGES + HEAVY_PACKAGES loaded once `code` has run."""
    watched = (*SERVER_PACKAGES, *HEAVY_PACKAGES)
    report = (
        f"import sys; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(watched)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_importing_the_sdk_and_the_cli_imports_no_server_code_and_no_torch() -> None:
    assert imported_after("import client, client.sdk, client.cli, client.output, client.jobspec") == set()


def test_a_rest_command_and_the_help_run_without_importing_the_operator_package() -> None:
    code = (
        "import contextlib, io\n"
        "from client.cli import main\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        "    main(['--url', 'http://127.0.0.1:9', '--key', 'k', 'jobs', 'list'])\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(['--help'])"
    )
    assert imported_after(code) == set()


def test_the_operator_commands_are_handed_to_ops_only_when_they_run() -> None:
    code = (
        "import contextlib, io\n"
        "from client.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['serve', '--help'])"
    )
    assert "ops" in imported_after(code)


def test_the_supervisor_never_imports_torch() -> None:
    loaded = imported_after("import ops.cli, ops.serve, ops.admin, trainer.synthetic.demo_data")
    assert "torch" not in loaded and "ops" in loaded


def test_the_wheel_packages_the_operator_package_and_its_console_script() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(where=str(REPO_ROOT), include=include)
    assert {"ops", "client", "core", "api"} <= set(packages)
    assert project["project"]["scripts"] == {"mapo": "client.cli:main", "mapo-ops": "ops.cli:main"}
