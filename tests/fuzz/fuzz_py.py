"""atheris harnesses for the pure-Python parsers: the .pth pickle interpreter and its ZIP reader,
the safetensors header, the rwkv.cpp header, binidx .idx/.bin pairs, zst shards and state files.

Usage: python tests/fuzz/fuzz_py.py TARGET [libFuzzer args...]   (TARGET in TARGETS below)

Each fuzzed input is written to a file in a private temporary folder and opened with the public
reader, and every array it returns is read to the end (so lazy views are exercised). The readers
document ValueError (malformed content, including dataprep's FormatError) and OSError (I/O) as
their only failures, plus IndexError for out-of-range document access; any other exception,
a crash, or a hang is a finding.
"""

import atexit
import os
import shutil
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import numpy as np
    from rwkv5.formats import zipfile_reader
    from rwkv5.formats.pth import read_pth
    from rwkv5.formats.rwkvcpp import read_rwkvcpp
    from rwkv5.formats.safetensors import read_safetensors
    from rwkv5.formats.state_io import load_state
    from rwkv5.dataprep.formats import BinIdx, ZstShard

ALLOWED = (ValueError, OSError)
_DIR = tempfile.mkdtemp(prefix="rwkv5-fuzz-")
atexit.register(shutil.rmtree, _DIR, True)


def _write(name, data):
    p = os.path.join(_DIR, name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def _touch(arrays):
    for a in arrays:
        np.asarray(a).sum(dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(
            a
        ).tobytes()


def t_pth(data):
    sd, kinds = read_pth(_write("x.pth", data), verify_crc=bool(data[:1] == b"P"))
    _touch(sd.values())
    assert set(sd) == set(kinds)


def t_zip(data):
    z = zipfile_reader.StoredZip(_write("x.zip", data), verify_crc=bool(data[-1:] == b"\0"))
    for name in list(z.members)[:64]:
        assert len(z.read(name)) == len(z.data(name))
        z.check_crc(name)


def t_safetensors(data):
    tensors, dtypes, meta = read_safetensors(_write("x.safetensors", data))
    _touch(tensors.values())
    assert set(tensors) == set(dtypes)


def t_rwkvcpp(data):
    sd, info = read_rwkvcpp(_write("x.bin", data))
    _touch(sd.values())


def t_state(data):
    st = load_state(_write("s.safetensors", data))
    _touch([st.att_x, st.att_kv, st.ffn_x])


def t_binidx(data):
    # first 4 bytes: length of the .idx part; the rest is the .bin
    k = int.from_bytes(data[:4].ljust(4, b"\0"), "little") % (len(data) + 1)
    _write("b.idx", data[4 : 4 + k])
    _write("b.bin", data[4 + k :])
    b = BinIdx(os.path.join(_DIR, "b"))
    for i in range(min(len(b), 64)):
        b[i].tobytes()


def t_zst(data):
    with ZstShard(_write("z.zst", data)) as z:
        for i in range(min(len(z), 64)):
            z[i].tobytes()


TARGETS = {
    "pth": t_pth,
    "zip": t_zip,
    "safetensors": t_safetensors,
    "rwkvcpp": t_rwkvcpp,
    "state": t_state,
    "binidx": t_binidx,
    "zst": t_zst,
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer args]")
    fn = TARGETS[sys.argv[1]]

    def one(data):
        try:
            fn(data)
        except ALLOWED:
            pass

    atheris.Setup([sys.argv[0]] + sys.argv[2:], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
