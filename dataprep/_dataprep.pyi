# Type stubs for the C extension rwkv5.dataprep._dataprep (csrc/py_dataprep.c). A tokenizer is
# the capsule of an rwkv5.tokenizer.WorldTokenizer (its `capsule` attribute).
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

META_RECORD_SIZE: int
SCRIPT_NAMES: Tuple[str, ...]
STATUS_NAMES: Tuple[str, ...]
# the codec and record-format tables (dataprep.h): {"name", "suffix", "magic"} / {"name", "json", "splittable"}
CODECS: Tuple[Dict[str, Any], ...]
RECORD_FORMATS: Tuple[Dict[str, Any], ...]
CODEC_HEAD: int
LANG_MAX: int

_Tokenizer = Any
_Buffer = Union[bytes, bytearray, memoryview]

def encode_batch_count(tokenizer: _Tokenizer, texts: List[bytes], n_threads: int) -> int: ...
def run_task(
    tokenizer: _Tokenizer,
    path: str,
    record_format: str,
    start: int,
    end: int,
    text_field: str,
    lang_field: Optional[str],
    repair_utf8: bool,
    fail_fast: bool,
    n_threads: int,
    tok_path: str,
    meta_path: str,
    batch_bytes: int = ...,
    fsync: bool = ...,
    cancel: Optional[_Buffer] = ...,
    codec: str = ...,
    lang: Optional[str] = ...,
) -> Dict[str, Any]: ...
def detect_codec(head: _Buffer) -> Optional[str]: ...
def encode_texts(
    tokenizer: _Tokenizer,
    data: _Buffer,
    offsets: np.ndarray,
    status: np.ndarray,
    lang: Optional[np.ndarray],
    repair_utf8: bool,
    n_threads: int,
    tok_fd: int,
    meta_fd: int,
    cancel: Optional[_Buffer] = ...,
) -> Dict[str, Any]: ...
def copy_ranges(out_fd: int, src_paths: Sequence[str], ranges: np.ndarray) -> None: ...
def zstd_compress(data: _Buffer, level: int) -> bytes: ...
def zstd_decompress(frame: _Buffer, size: int) -> bytes: ...
def crc32c(data: _Buffer, crc: int = ...) -> int: ...
def json_extract(
    line: _Buffer, field: str, lang_field: Optional[str] = ..., repair: bool = ...
) -> Any: ...
def utf8_copy(data: _Buffer, repair: bool) -> Optional[bytes]: ...
def script_of(code_point: int) -> int: ...
def dominant_script(text: str) -> int: ...
