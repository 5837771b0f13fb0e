"""Malformed and malicious checkpoint files: each must raise a clear ValueError/OSError naming the
problem — never execute anything, crash, hang or allocate far more than the file."""

import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from rwkv5.formats.pth import read_pth
from rwkv5.formats.safetensors import read_safetensors, write_safetensors
from rwkv5.loading import read_checkpoint

from _loaders_util import G, I, S, dict_pkl, tensor_pkl, tup, write_pth, write_zip


def _good_pth(path):
    data = np.arange(24, dtype=np.float32)
    pkl = dict_pkl(
        [
            ("a", tensor_pkl(numel=24, size=(4, 6), stride=(6, 1))),
            ("b", tensor_pkl(key="1", storage="HalfStorage", numel=8, size=(8,), stride=(1,))),
        ]
    )
    write_pth(path, pkl, {"0": data.tobytes(), "1": np.ones(8, np.float16).tobytes()})
    return path


def _pth_with(tmp_path, pkl, storages=None, name="h.pth"):
    p = tmp_path / name
    write_pth(
        p, pkl, storages if storages is not None else {"0": np.zeros(4, np.float32).tobytes()}
    )
    return p


# -- code execution attempts -----------------------------------------------------------------


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize(
    "which", ["os.system", "builtins.eval", "subprocess.Popen", "builtins.exec"]
)
def test_malicious_global_is_refused_and_nothing_runs(tmp_path, which):
    import builtins
    import subprocess

    marker = tmp_path / "PWNED"
    cmd_shell = f"touch {marker}"
    cmd_py = f"open({str(marker)!r}, 'w').close()"
    func, arg = {
        "os.system": (os.system, cmd_shell),
        "builtins.eval": (builtins.eval, cmd_py),
        "builtins.exec": (builtins.exec, cmd_py),
        "subprocess.Popen": (subprocess.Popen, ["touch", str(marker)]),
    }[which]
    # The evil object is a state-dict value, the way a booby-trapped checkpoint would hide it.
    pkl = pickle.dumps({"emb.weight": _Evil(func, arg)}, protocol=2)
    p = _pth_with(tmp_path, pkl)
    with pytest.raises(ValueError, match="refusing global") as e:
        read_pth(p)
    assert which.split(".")[1] in str(e.value)  # the message names the callable
    with pytest.raises(ValueError, match="refusing global"):
        read_checkpoint(p)
    assert not marker.exists()


def test_stack_global_protocol4_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    pkl = pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=4)  # STACK_GLOBAL form
    with pytest.raises(ValueError, match="refusing global .*system"):
        read_pth(_pth_with(tmp_path, pkl))
    assert not marker.exists()


def test_reduce_on_non_allowlisted_callable(tmp_path):
    # A storage type is allowlisted as a *name* for persistent ids, never as a callable.
    pkl = b"\x80\x02}(" + S("x") + G("torch", "FloatStorage") + b")R" + b"u."
    with pytest.raises(ValueError, match="REDUCE on torch.FloatStorage"):
        read_pth(_pth_with(tmp_path, pkl))
    pkl = b"\x80\x02}(" + S("x") + S("os.system") + b")R" + b"u."  # REDUCE on a string
    with pytest.raises(ValueError, match="REDUCE on 'os.system'"):
        read_pth(_pth_with(tmp_path, pkl))
    pkl = b"\x80\x02}(" + S("x") + G("collections", "OrderedDict") + tup(S("a")) + b"R" + b"u."
    with pytest.raises(ValueError, match="OrderedDict called with arguments"):
        read_pth(_pth_with(tmp_path, pkl))


def test_setitems_on_a_list(tmp_path):
    pkl = b"\x80\x02](" + S("k") + S("v") + b"u."
    with pytest.raises(ValueError, match="SETITEM.* on a list"):
        read_pth(_pth_with(tmp_path, pkl))


@pytest.mark.parametrize("op", [b"b", b"i", b"G", b"o", b"\x81", b"\x92", b"c"])
def test_unknown_opcodes_are_refused(tmp_path, op):
    # BUILD, INST, BINFLOAT, OBJ, NEWOBJ, NEWOBJ_EX: not in a state dict; "c" with garbage name
    pkl = b"\x80\x02}" + op + b"\x00\x00\x00\x00\x00\x00\x00\x00\n\n."
    with pytest.raises(
        ValueError, match=r"refusing pickle opcode|refusing global|unterminated|truncated"
    ):
        read_pth(_pth_with(tmp_path, pkl))


def test_persistent_id_must_be_a_storage(tmp_path):
    pkl = b"\x80\x02}(" + S("x") + tup(S("module"), S("os"), S("0"), S("cpu"), I(4)) + b"Q" + b"u."
    with pytest.raises(ValueError, match="persistent id"):
        read_pth(_pth_with(tmp_path, pkl))
    pkl = dict_pkl([("x", tensor_pkl(storage="LongStorage"))])
    with pytest.raises(ValueError, match="refusing global torch.LongStorage"):
        read_pth(_pth_with(tmp_path, pkl))


# -- sizes, shapes, strides -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(numel=10**6), "declares 1000000 elements"),  # numel > member
        (dict(numel=2**62), "invalid numel"),
        (dict(numel=-1), "invalid numel"),
        (dict(size=(-4,), stride=(1,)), "size"),  # negative shape
        (dict(size=(2, 2), stride=(-1, 1)), "stride"),  # negative stride
        (dict(size=(2**40, 2**40), stride=(1, 1)), "past the end"),  # huge shape
        (dict(size=(2,), stride=(2**62,)), "stride"),  # overflowing stride
        (dict(size=(2**70,), stride=(1,)), "LONG1|size"),  # beyond int64
        (dict(offset=-1), "storage_offset"),
        (dict(offset=3, size=(2,), stride=(1,)), "past the end"),  # view past the end
        (dict(size=(2, 2), stride=(1,)), "different lengths"),
        (dict(key="../../etc/passwd"), "storage key"),
        (dict(key="nope"), "has no member"),
    ],
)
def test_bad_tensor_geometry(tmp_path, kw, msg):
    args = dict(numel=4, offset=0, size=(4,), stride=(1,))
    args.update(kw)
    pkl = dict_pkl([("x", tensor_pkl(**args))])
    with pytest.raises(ValueError, match=msg):
        read_pth(_pth_with(tmp_path, pkl))


def test_many_overlapping_transposed_views_are_capped(tmp_path):
    """10,000 non-contiguous views of one 1 MiB storage would materialise 10 GB: refused."""
    n = 512
    view = tensor_pkl(numel=n * n, size=(n, n), stride=(1, n))
    pkl = dict_pkl([(f"t{i}", view) for i in range(10_000)])
    with pytest.raises(ValueError, match="more bytes than the file holds"):
        read_pth(_pth_with(tmp_path, pkl, {"0": np.zeros(n * n, np.float32).tobytes()}))


def test_top_level_must_be_a_dict_of_tensors(tmp_path):
    with pytest.raises(ValueError, match="top object is a list"):
        read_pth(_pth_with(tmp_path, b"\x80\x02]."))
    with pytest.raises(ValueError, match="'x' is a int"):
        read_pth(_pth_with(tmp_path, b"\x80\x02}(" + S("x") + I(3) + b"u."))


# -- the ZIP container --------------------------------------------------------------------------


def test_truncation_at_many_offsets(tmp_path):
    good = _good_pth(tmp_path / "g.pth").read_bytes()
    read_pth(tmp_path / "g.pth")
    cuts = sorted(
        set(
            list(range(0, len(good), max(1, len(good) // 60)))
            + list(range(len(good) - 30, len(good)))
        )
    )
    for cut in cuts:
        p = tmp_path / "t.pth"
        p.write_bytes(good[:cut])
        with pytest.raises((ValueError, OSError)):
            read_pth(p)


def test_corrupted_bytes_never_crash(tmp_path):
    good = bytearray(_good_pth(tmp_path / "g.pth").read_bytes())
    want = {k: (a.shape, a.dtype) for k, a in read_pth(tmp_path / "g.pth")[0].items()}
    rng = np.random.default_rng(0)
    rejected = 0
    for _ in range(300):
        bad = bytearray(good)
        for pos in rng.integers(0, len(bad), size=3):
            bad[pos] = int(rng.integers(0, 256))
        p = tmp_path / "c.pth"
        p.write_bytes(bytes(bad))
        try:
            sd, _ = read_pth(p)
        except (ValueError, OSError):
            rejected += 1
            continue
        # accepted (the bytes hit were inside storage data, which is not CRC-checked by default):
        # the same tensors with the same shapes and dtypes, as plain arrays
        assert {k: (a.shape, a.dtype) for k, a in sd.items()} == want
        assert all(type(a) is np.ndarray for a in sd.values())
    assert rejected > 250  # the pickle and ZIP structure are checked: most corruptions are refused


def test_wrong_magic(tmp_path):
    p = tmp_path / "x.pth"
    p.write_bytes(b"GIF89a" + b"\0" * 100)
    with pytest.raises(ValueError, match="unrecognised checkpoint format"):
        read_checkpoint(p)
    with pytest.raises(ValueError, match="not a torch .pth ZIP"):
        read_pth(p)
    p.write_bytes(b"")
    with pytest.raises(ValueError):
        read_checkpoint(p)


def test_legacy_torch_format_is_explained(tmp_path):
    p = tmp_path / "old.pth"
    p.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest")
    with pytest.raises(ValueError, match="legacy"):
        read_checkpoint(p)


@pytest.mark.parametrize(
    "name", ["../evil.pkl", "/abs/data.pkl", "archive/../../x", "a\\b", "C:/x"]
)
def test_path_traversal_member_names(tmp_path, name):
    p = tmp_path / "trav.pth"
    write_zip(p, {"archive/data.pkl": b"\x80\x02}.", name: b"x"}, raw_names=True)
    with pytest.raises(ValueError, match="escapes the archive"):
        read_pth(p)


def test_compressed_member_zip_bomb_refused(tmp_path):
    p = tmp_path / "bomb.pth"
    pkl = dict_pkl([("x", tensor_pkl(numel=50_000_000, size=(50_000_000,), stride=(1,)))])
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", b"\0" * 50_000_000)  # 50 MB of zeros -> ~50 KB
    assert p.stat().st_size < 200_000
    with pytest.raises(ValueError, match="compressed"):
        read_pth(p)


def _central_entries(raw):
    eocd = raw.rfind(struct.pack("<I", 0x06054B50))
    pos = struct.unpack_from("<I", raw, eocd + 16)[0]
    offsets = []
    while struct.unpack_from("<I", raw, pos)[0] == 0x02014B50:
        nlen, xlen, clen = struct.unpack_from("<HHH", raw, pos + 28)
        offsets.append(pos)
        pos += 46 + nlen + xlen + clen
    return offsets


def test_overlapping_members_refused(tmp_path):
    p = _good_pth(tmp_path / "g.pth")
    raw = bytearray(p.read_bytes())
    first = _central_entries(raw)[0]
    # Grow the first member's size (both fields) so its data runs over the next member's header.
    size = struct.unpack_from("<I", raw, first + 24)[0]
    struct.pack_into("<II", raw, first + 20, size + 100, size + 100)
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="overlap"):
        read_pth(p)


def test_central_entry_pointing_at_another_member(tmp_path):
    p = _good_pth(tmp_path / "g.pth")
    raw = bytearray(p.read_bytes())
    e0, e1 = _central_entries(raw)[:2]
    struct.pack_into("<I", raw, e1 + 42, struct.unpack_from("<I", raw, e0 + 42)[0])
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="differs from the central directory"):
        read_pth(p)


def test_member_offset_out_of_range(tmp_path):
    p = _good_pth(tmp_path / "g.pth")
    raw = bytearray(p.read_bytes())
    eocd = raw.rfind(struct.pack("<I", 0x06054B50))
    cd_off = struct.unpack_from("<I", raw, eocd + 16)[0]
    struct.pack_into("<I", raw, cd_off + 42, 0x7FFFFFF0)  # first member's local header offset
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="out of range"):
        read_pth(p)
    raw2 = bytearray(p.read_bytes())
    struct.pack_into("<I", raw2, eocd + 16, 0x7FFFFFF0)  # central directory offset
    p.write_bytes(bytes(raw2))
    with pytest.raises(ValueError, match="central directory"):
        read_pth(p)


# -- safetensors --------------------------------------------------------------------------------


def _st(tmp_path, header, data=b"", hlen=None, name="h.safetensors"):
    hb = json.dumps(header).encode() if not isinstance(header, bytes) else header
    p = tmp_path / name
    p.write_bytes(struct.pack("<Q", len(hb) if hlen is None else hlen) + hb + data)
    return p


@pytest.mark.parametrize("hlen", [2**64 - 1, 10**12, 100_000_001])
def test_safetensors_huge_header_length(tmp_path, hlen):
    with pytest.raises(ValueError, match="header length"):
        read_safetensors(_st(tmp_path, {}, hlen=hlen))


@pytest.mark.parametrize(
    "header, data, msg",
    [
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "hole"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 12,
            "trailing bytes",
        ),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "span"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
        (
            {"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "span",
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "data_offsets"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}},
            b"\0" * 8,
            "data_offsets",
        ),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}},
            b"\0" * 8,
            "exactly",
        ),
        ({"__metadata__": {"k": 3}}, b"", "__metadata__"),
        ([1, 2], b"", "expected an object"),
        (b'{"a": 1, "a": 2}', b"", "duplicate key"),
        (b"\xff\xfe{}", b"", "UTF-8 JSON"),
        (b"{not json", b"", "UTF-8 JSON"),
    ],
)
def test_safetensors_invalid_headers(tmp_path, header, data, msg):
    with pytest.raises(ValueError, match=msg):
        read_safetensors(_st(tmp_path, header, data))


def test_safetensors_truncation_at_many_offsets(tmp_path):
    p = tmp_path / "g.safetensors"
    write_safetensors(p, {"a": np.arange(100, dtype=np.float32), "b": np.ones((3, 5), np.float16)})
    good = p.read_bytes()
    for cut in range(0, len(good)):
        q = tmp_path / "t.safetensors"
        q.write_bytes(good[:cut])
        with pytest.raises(ValueError):
            read_safetensors(q)


def test_checkpoint_with_integer_tensor_refused(tmp_path):
    p = tmp_path / "i.safetensors"
    write_safetensors(p, {"emb.weight": np.zeros((2, 2), np.int32)})
    with pytest.raises(ValueError, match="dtype I32"):
        read_checkpoint(p)


def test_deeply_nested_tuples_in_messages(tmp_path):
    deep = b"(" * 50_000 + b"t" * 50_000  # a tuple nested 50,000 levels deep as "size"
    pid = tup(S("storage"), G("torch", "FloatStorage"), S("0"), S("cpu"), I(4)) + b"Q"
    args = tup(pid, I(0), deep, tup(I(1)), b"\x89", G("collections", "OrderedDict") + b")R")
    pkl = b"\x80\x02}(" + S("x") + G("torch._utils", "_rebuild_tensor_v2") + args + b"R" + b"u."
    with pytest.raises(ValueError, match="size"):
        read_pth(_pth_with(tmp_path, pkl))
