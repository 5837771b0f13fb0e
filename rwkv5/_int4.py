"""int4 weights (``dtype="int4"``): symmetric 4-bit quantisation in groups of 32 weights, stored as
the blocks the C kernels read (csrc/model/dtypes.h), and back to float32. NumPy only."""

import numpy as np

from ._checkpoint import as_float

__all__ = ["quantize_int4", "dequantize_int4", "INT4_BLOCK", "INT4_BLOCK_BYTES", "INT4_GROUP"]

#: int4 blocks (csrc/model/dtypes.h): 64 weights in 36 bytes, two groups of 32 with an fp16 scale each
INT4_BLOCK, INT4_BLOCK_BYTES, INT4_GROUP = 64, 36, 32


def quantize_int4(a, block_rows=1024):
    """Symmetric 4-bit quantisation in groups of 32 weights: uint8 blocks (rows, ceil(cols/64) * 36).

    Each group of 32 consecutive weights of a row gets one fp16 scale s = -m / 8, m its weight of
    largest magnitude (sign kept, so m itself is exactly q = -8), and q = round(W / s) in [-8, 7]:
    W ~= q * s. A block of 64 weights is 36 bytes: the two scales, then each group's 16 bytes, byte b
    holding q of weight b (low nibble, two's complement) and of weight b + 16 (high nibble);
    weights past the row's end are 0 (0.5625 bytes per weight). ggml's Q4_0 is the same up to the
    nibble's offset and the pairing of the scales.

    Group size 32 and symmetric were chosen by measurement (docs/formats.md has the table): on the
    shipped model (`rwkv5.tiny`) bits per byte of the sample corpus rose 0.30% (32, 64 and 128 alike)
    symmetric and 0.67-0.83% asymmetric; the KL divergence to fp32 was 1.9e-2 (32) / 1.9e-2 (64) /
    2.3e-2 (128), asymmetric 1.4e-2 ... 1.9e-2 for 25% more bytes and a zero-point term per group.

    a: float32/float16/float64 or uint16 (bfloat16 bits), 2-D; `block_rows` rows at a time.
    """
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"quantize_int4: expected a 2-D matrix, got shape {a.shape}")
    rows, cols = a.shape
    nb = -(-cols // INT4_BLOCK)
    out = np.zeros((rows, nb * INT4_BLOCK_BYTES), np.uint8)
    view = out.reshape(rows, nb, INT4_BLOCK_BYTES)
    for r0 in range(0, rows, block_rows):
        w = as_float(a[r0 : r0 + block_rows], np.float32)
        if not np.all(np.isfinite(w)):
            raise ValueError("quantize_int4: the matrix has non-finite values")
        n = len(w)
        g = np.zeros((n, nb * INT4_BLOCK), np.float32)
        g[:, :cols] = w
        g = g.reshape(n, 2 * nb, INT4_GROUP)
        m = np.take_along_axis(g, np.abs(g).argmax(axis=2)[..., None], axis=2)[..., 0]
        with np.errstate(over="ignore"):
            s = (m / np.float32(-8)).astype(np.float16)
        if not np.all(np.isfinite(s)):
            raise ValueError(
                "quantize_int4: a weight is too large for an fp16 group scale (|w| > 524032)"
            )
        sf = s.astype(np.float32)
        safe = np.where(sf != 0, sf, np.float32(1))
        q = np.clip(np.rint(g / safe[..., None]), -8, 7).astype(np.int8)
        q[sf == 0] = 0
        nib = (q & 15).astype(np.uint8).reshape(n, nb, 2, 2, 16)  # (block, group, half, byte)
        blk = view[r0 : r0 + n]
        blk[:, :, 0:4] = s.reshape(n, nb, 2).view(np.uint8).reshape(n, nb, 4)
        blk[:, :, 4:] = (nib[:, :, :, 0] | (nib[:, :, :, 1] << 4)).reshape(n, nb, 32)
    return out


def dequantize_int4(blocks, cols):
    """The float32 (rows, cols) matrix q * s that int4 blocks (from `quantize_int4`) stand for."""
    blocks = np.asarray(blocks, np.uint8)
    rows = blocks.shape[0]
    nb = -(-cols // INT4_BLOCK)
    if blocks.ndim != 2 or blocks.shape[1] != nb * INT4_BLOCK_BYTES:
        raise ValueError(
            f"dequantize_int4: expected ({rows}, {nb * INT4_BLOCK_BYTES}) blocks for {cols} "
            f"columns, got {blocks.shape}"
        )
    b = blocks.reshape(rows, nb, INT4_BLOCK_BYTES)
    s = (
        np.ascontiguousarray(b[:, :, :4])
        .view(np.float16)
        .astype(np.float32)
        .reshape(rows, nb, 2, 1)
    )
    nib = b[:, :, 4:].reshape(rows, nb, 2, 16)
    q = np.stack([nib & 15, nib >> 4], axis=3).astype(np.int8)  # (rows, nb, group, half, byte)
    q = ((q ^ 8) - 8).reshape(rows, nb, 2, 32)
    return (q * s).reshape(rows, nb * INT4_BLOCK)[:, :cols].astype(np.float32)
