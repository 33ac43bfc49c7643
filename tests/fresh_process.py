"""Run Python code in a fresh process that cannot see the checkout, as a user of a saved checkpoint would."""

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from helpers import REPO


def run_fresh_python(
    code: str, workdir: Path, timeout: float = 300, python: str = sys.executable, args: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """Runs `code` (with `args` in `sys.argv[1:]`) with `python` (default: this venv's interpreter), cwd `workdir`,
    no PYTHONPATH and a private HF modules cache.

    The code fails loudly if the checkout is on `sys.path`, so a passing test really loaded remote code.

    Returns:
        The completed process (check `returncode`, `stdout`, `stderr`).
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "hf_modules"), TRANSFORMERS_VERBOSITY="error")
    guard = (
        "import sys, os\n"
        f"assert not any(os.path.abspath(p or os.getcwd()) == {str(REPO)!r} for p in sys.path), sys.path\n"
    )
    return subprocess.run(
        [python, "-c", guard + code, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
