import subprocess
import sys


def test_the_client_and_the_supervisor_never_import_torch() -> None:
    modules = "client.cli, client.sdk, client.output, client.serve, trainer.synthetic.demo_data"
    code = f"import sys, {modules}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
