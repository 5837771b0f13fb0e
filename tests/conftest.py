import os
import pathlib
import signal

import pytest

# The Ctrl-C tests send SIGINT to child processes and expect KeyboardInterrupt. A non-interactive
# shell starts background jobs (`make test &`) with SIGINT ignored; an ignored signal stays ignored
# across exec and Python then leaves it so, and those tests would see the work finish instead. A
# caught signal is reset to its default at exec: with Python's own handler here, every child starts
# with SIGINT at its default, as it would from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
if os.environ.get("RWKV5_FIXTURES"):
    FIXTURES = pathlib.Path(os.environ["RWKV5_FIXTURES"])


@pytest.fixture(scope="session")
def fixtures_dir():
    """../shared/fixtures (the trained tiny model, expected logits, the World vocab).

    Present for developers and CI; absent in a user's clone, where the tests that need it skip.
    """
    if not FIXTURES.is_dir():
        pytest.skip(f"fixture folder {FIXTURES} is absent (it ships beside the project checkout, not in it)")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_model_path():
    """The small trained byte-level RWKV-5.2 model that ships inside the package (rwkv5.tiny).

    Always present (it is package data): tests that need *a* trained model use it, so they run
    in a user's clone too; only the rwkv.cpp-compatibility tests need ../shared/fixtures.
    """
    import rwkv5.tiny

    assert rwkv5.tiny.PATH.is_file(), f"{rwkv5.tiny.PATH} is missing from the installed package"
    return rwkv5.tiny.PATH


# the S3 test server (tests/s3server.py): `s3server` (one per session) and `s3` (a fresh bucket)
from s3server import s3, s3server  # noqa: E402,F401
