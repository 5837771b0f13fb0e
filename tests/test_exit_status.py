"""The command-line tools' exit status under Ctrl-C (rwkv5/_exit.py).

A Ctrl-C that arrives once a command has finished its work must not turn its status into
"killed by SIGINT" (-2): tests/test_dataprep_resume.py::test_ctrl_c_then_resume saw exactly that
when the interrupt landed while the interpreter was exiting after a complete build.
"""

import os
import subprocess
import sys
import textwrap

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("module", ["rwkv5.__main__", "rwkv5.dataprep.__main__"])
def test_sigint_after_main_returned_keeps_its_status(module):
    # main has returned 0; the Ctrl-C arrives while the process is on its way out
    p = _python(f"""
        import os, signal, sys, time
        import {module} as cli
        cli.main = lambda argv=None: 0
        status = cli.run()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        sys.exit(status)
    """)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize(
    "module,name", [("rwkv5.__main__", "rwkv5"), ("rwkv5.dataprep.__main__", "rwkv5-prep")]
)
def test_unhandled_ctrl_c_in_main_exits_130_with_one_line(module, name):
    p = _python(f"""
        import sys
        import {module} as cli
        def main(argv=None):
            raise KeyboardInterrupt
        cli.main = main
        sys.exit(cli.run())
    """)
    assert p.returncode == 130, (p.returncode, p.stderr)
    assert p.stderr.strip() == f"{name}: interrupted", p.stderr


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python >= 3.11")
def test_installed_commands_use_the_guarded_entry_points():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {"rwkv5": "rwkv5.__main__:run", "rwkv5-prep": "rwkv5.dataprep.__main__:run"}
