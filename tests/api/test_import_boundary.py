import subprocess
import sys


def test_importing_the_api_does_not_import_torch() -> None:
    code = "import sys, api.main; sys.exit(1 if 'torch' in sys.modules or 'worker' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
