"""The torch-free .pth reader against files written by real torch.save and read by torch.load."""

import zipfile

import numpy as np
import pytest

from rwkv5.formats.pth import PthFile, read_pth
from rwkv5.formats.zipfile_reader import StoredZip
from rwkv5.testing import random_state_dict

from _loaders_util import (
    assert_same_arrays,
    mmap_backed,
    dict_pkl,
    tensor_pkl,
    torch_load_np,
    write_pth,
    write_zip64,
)

torch = pytest.importorskip("torch", reason="torch (test extra) writes the reference .pth files")


def _random_sd(dtype, seed=0):
    sd = random_state_dict("5.2", n_layer=1, n_embd=16, head_size=8, vocab_size=50, seed=seed)
    return {k: torch.from_numpy(v).to(dtype) for k, v in sd.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_random_state_dict_equals_torch(tmp_path, dtype):
    p = tmp_path / "m.pth"
    torch.save(_random_sd(dtype), p)
    sd, kinds = read_pth(p)
    assert_same_arrays(sd, torch_load_np(p))
    expect = {
        torch.float32: "fp32",
        torch.bfloat16: "bf16",
        torch.float16: "fp16",
        torch.float64: "fp64",
    }[dtype]
    assert set(kinds.values()) == {expect}
    for a in sd.values():  # contiguous tensors are read-only views of the file's mmap
        assert mmap_backed(a) and not a.flags.writeable


def test_bf16_values_are_raw_bits(tmp_path):
    p = tmp_path / "b.pth"
    t = torch.tensor([1.0, -2.5, 3.140625, 0.0], dtype=torch.bfloat16)
    torch.save({"x": t}, p)
    sd, _ = read_pth(p)
    assert sd["x"].dtype == np.uint16
    widened = (sd["x"].astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(widened, t.float().numpy())


def test_views_offsets_strides_parameters(tmp_path):
    base = torch.arange(40, dtype=torch.float16)
    w = torch.randn(6, 5)
    sd = {
        "transposed": w.t(),  # non-contiguous: materialised
        "slice_a": base[3:13],  # shared storage, offset 3
        "slice_b": base[13:40].view(3, 9),  # same storage, offset 13
        "strided": torch.randn(8, 6)[:, ::2],  # stride 2 in the last axis
        "param": torch.nn.Parameter(torch.randn(3, 2)),  # _rebuild_parameter
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "bf16_T": torch.randn(4, 3).to(torch.bfloat16).t(),
    }
    p = tmp_path / "v.pth"
    torch.save(sd, p)
    f = PthFile(p)
    assert_same_arrays(f.state_dict, torch_load_np(p))
    assert f.zero_copy["slice_a"] and f.zero_copy["slice_b"] and f.zero_copy["param"]
    assert not f.zero_copy["transposed"] and not f.zero_copy["strided"]
    for k, a in f.state_dict.items():
        assert a.flags.c_contiguous, k
    # the two slices share one storage member: both are views into the same mmap
    assert f.state_dict["slice_a"].base is not None and f.state_dict["slice_b"].base is not None


def test_ordered_dict_and_any_top_folder(tmp_path):
    import collections

    sd = collections.OrderedDict((f"t{i}", torch.randn(i + 1)) for i in range(5))
    for stem in ("my-model_v2", "wéird"):  # torch names the folder after the stem, or "archive"
        p = tmp_path / f"{stem}.pth"
        torch.save(sd, p)
        top = zipfile.ZipFile(p).namelist()[0].split("/")[0]
        f = PthFile(p)
        assert f.top == top
        assert_same_arrays(f.state_dict, torch_load_np(p))
    assert PthFile(tmp_path / "my-model_v2.pth").top == "my-model_v2"


def test_zip64_archive_equals_torch(tmp_path):
    """A small checkpoint rewritten with every size/offset in ZIP64 fields (as files > 4 GiB are)."""
    src = tmp_path / "src.pth"
    torch.save(_random_sd(torch.bfloat16, seed=3), src)
    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    dst = tmp_path / "z64.pth"
    write_zip64(dst, members)
    zf = StoredZip(dst, verify_crc=True)  # our reader takes every value from the ZIP64 fields
    assert set(zf.members) == set(members)
    assert all(zf.read(n) == d for n, d in members.items())
    with zipfile.ZipFile(dst) as z:  # Python's reader agrees it is a valid archive
        assert {i.filename: z.read(i) for i in z.infolist()} == members
    ours = read_pth(dst)[0]
    assert_same_arrays(ours, torch_load_np(src))
    assert_same_arrays(ours, torch_load_np(dst))  # and torch reads the rewritten file the same


def test_handmade_pickle_matches_torch(tmp_path):
    """The test helpers' pickle is what torch writes: torch loads it too (guards the hostile tests)."""
    data = np.arange(12, dtype=np.float32)
    pkl = dict_pkl(
        [
            ("a", tensor_pkl(numel=12, offset=2, size=(2, 5), stride=(5, 1))),
            ("b", tensor_pkl(numel=12, offset=0, size=(3, 4), stride=(1, 3))),
        ]
    )
    p = tmp_path / "h.pth"
    write_pth(p, pkl, {"0": data.tobytes()})
    ours = read_pth(p)[0]
    assert_same_arrays(ours, torch_load_np(p))
    np.testing.assert_array_equal(ours["a"], data[2:12].reshape(2, 5))


def test_trained_model_pth_files_equal_torch(tiny_files):
    """The shipped model saved by torch.save in fp32 and bf16, as RWKV-LM writes its checkpoints."""
    for name in ("fp32.pth", "bf16.pth"):
        f = PthFile(tiny_files[name])
        assert_same_arrays(f.state_dict, torch_load_np(tiny_files[name]))
        assert all(f.zero_copy.values())
        assert len(f.state_dict) == 72


def test_crc_checked_on_request(tmp_path):
    p = tmp_path / "c.pth"
    torch.save({"x": torch.zeros(300_000)}, p)  # 1.2 MB: above the always-checked size
    info = zipfile.ZipFile(p).getinfo(
        next(n for n in zipfile.ZipFile(p).namelist() if n.endswith("data/0"))
    )
    raw = bytearray(p.read_bytes())
    # flip a data byte in the storage member (after its local header)
    zf = StoredZip(p)
    off = zf.members[info.filename].data_offset + 100
    del zf
    raw[off] ^= 0xFF
    p.write_bytes(bytes(raw))
    StoredZip(p)  # big members are not CRC-checked by default (lazy mmap)
    with pytest.raises(ValueError, match="CRC-32 mismatch"):
        StoredZip(p, verify_crc=True)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_protocols(tmp_path, protocol):
    """Protocol 4+ uses FRAME, SHORT_BINUNICODE, STACK_GLOBAL and MEMOIZE instead of GLOBAL/BINPUT."""
    p = tmp_path / f"p{protocol}.pth"
    torch.save(_random_sd(torch.bfloat16, seed=protocol), p, pickle_protocol=protocol)
    # torch's own weights_only unpickler has no FRAME opcode; this file is ours, so plain unpickling
    assert_same_arrays(read_pth(p)[0], torch_load_np(p, weights_only=protocol < 4))
