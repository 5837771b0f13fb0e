import os
import pathlib

import pytest

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
