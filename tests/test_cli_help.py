"""`osd --help` (and each command's --help) answers without importing torch."""

import subprocess
import sys

import pytest

PROBE = """
import sys
from organic_sd import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "decoder", "--help"], ["precompute", "--help"],
                                  ["precompute", "frames", "--help"], ["precompute", "denoiser", "--help"]])
def test_help_imports_no_torch(argv):
    p = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "usage:" in p.stdout and p.stdout.strip().splitlines()[-1] == "[]", p.stdout[-500:]
