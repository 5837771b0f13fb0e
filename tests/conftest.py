import os
import pathlib
import signal

import numpy as np
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
    """../shared/fixtures: rwkv.cpp's own files (its converter's .bin files, its quantized files, the
    logits rwkv.cpp computed on them) and a copy of the World vocab.

    Present for developers and CI; absent in a user's clone, where only the rwkv.cpp-compatibility
    tests that need it skip (tests that need *a* trained model use tiny_model_path / tiny_files).
    """
    if not FIXTURES.is_dir():
        pytest.skip(
            f"compares with rwkv.cpp's own files or logits (or the developers' copy of the World vocab) "
            f"in {FIXTURES}, which is absent (it ships beside the project checkout, not in it)"
        )
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


# The shipped model in the checkpoint formats users have, written at test time (session-scoped): an
# RWKV-LM/BlinkDL `.pth` in float32 and bfloat16 (by torch.save itself, as RWKV-LM writes them),
# rwkv.cpp `.bin` files in FP32 and FP16 (rwkv5.formats.rwkvcpp.write_rwkvcpp) and a safetensors
# file. Tests that need *a* trained model in some format use these, so they run without
# ../shared/fixtures; only the rwkv.cpp-compatibility tests (rwkv.cpp's own files and logits) do not.
TINY_PROMPT = [34, 105, 110]  # '"', 'i', 'n': the prompt of the expected-logits checks


# Under ASan (make test-asan: libasan preloaded, inherited by subprocesses) resident memory includes
# its shadow memory and the quarantine of freed blocks, so a bound on peak RSS says nothing there.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
plain_rss = pytest.mark.skipif(
    UNDER_ASAN, reason="peak RSS under ASan includes its shadow memory and quarantine"
)


class TinyFiles:
    """``tiny_files["fp32.pth"]`` etc.: each file is written on first use, then reused."""

    KINDS = ("fp32.pth", "bf16.pth", "FP32.bin", "FP16.bin", "fp32.safetensors")

    def __init__(self, folder: pathlib.Path, source: pathlib.Path):
        self.folder, self.source, self._done, self._sd = folder, source, {}, None

    def state_dict(self) -> dict:
        """The shipped weights (float32 NumPy, RWKV-LM names and raw values) in RWKV-LM's file order:
        emb, then the blocks by layer, then ln_out and head."""
        from rwkv5.loading import read_checkpoint

        if self._sd is None:
            sd, _ = read_checkpoint(self.source, mmap=False)

            def order(name):
                if name.startswith("blocks."):
                    return (1, int(name.split(".")[1]), name)
                return (0 if name.startswith("emb.") else 2, 0, name)

            self._sd = {k: np.array(sd[k], np.float32) for k in sorted(sd, key=order)}
        return {k: v.copy() for k, v in self._sd.items()}

    def expected_logits(self, gn_eps: float, tokens=TINY_PROMPT) -> np.ndarray:
        """Logits after ``tokens`` from a zero state, computed in float64 by rwkv5/reference.py (the
        NumPy twin of the C model), independently of the C code and of every file format."""
        from rwkv5.reference import ReferenceModel

        return ReferenceModel(self.state_dict(), gn_eps=gn_eps).forward(
            list(tokens), mode="recurrent"
        )[0]

    def __getitem__(self, kind: str) -> pathlib.Path:
        if kind not in self.KINDS:
            raise KeyError(f"{kind!r}: tiny_files has {', '.join(self.KINDS)}")
        if kind in self._done:
            return self._done[kind]
        path = self.folder / f"tiny-5v2-{kind}"
        sd = self.state_dict()
        if kind.endswith(".pth"):
            torch = pytest.importorskip(
                "torch", reason="torch (test extra) writes the RWKV-LM .pth files"
            )
            tt = {k: torch.from_numpy(v) for k, v in sd.items()}
            if kind == "bf16.pth":
                tt = {k: v.to(torch.bfloat16) for k, v in tt.items()}
            torch.save(tt, path)
        elif kind.endswith(".bin"):
            from rwkv5.formats.rwkvcpp import write_rwkvcpp

            write_rwkvcpp(path, sd, kind[:4])
        else:
            from rwkv5.formats.safetensors import write_safetensors

            write_safetensors(path, sd)
        self._done[kind] = path
        return path


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory, tiny_model_path):
    """The shipped trained model written as .pth (fp32, bf16), rwkv.cpp .bin (FP32, FP16) and
    safetensors files at test time (see TinyFiles)."""
    return TinyFiles(tmp_path_factory.mktemp("tiny-files"), tiny_model_path)


# the S3 test server (tests/s3server.py): `s3server` (one per session) and `s3` (a fresh bucket)
from s3server import s3, s3server  # noqa: E402,F401
