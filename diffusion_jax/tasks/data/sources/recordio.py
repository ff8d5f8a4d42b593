"""InsightFace / MXNet RecordIO (`train.rec` + `train.idx`), read without MXNet.

The layout, defined once here for the reader and for writers:

- Framing (dmlc-core RecordIO). A record is stored as one or more parts, each
  `[magic uint32][lrecord uint32][data][zero padding to a multiple of 4 bytes]`, little-endian,
  with magic = 0xCED7230A and lrecord = (cflag << 29) | length (length < 2**29). A writer splits
  a record wherever its data holds the magic word at an offset that is a multiple of 4: the magic
  word is dropped and the parts are flagged cflag = 1 (first), 2 (middle), 3 (last); a record in
  one part has cflag = 0. A reader joins the parts with the magic word between them.
- Record payload (MXNet's IRHeader): struct `<IfQQ` = (flag uint32, label float32, id uint64,
  id2 uint64), 24 bytes; when flag > 0, `flag` float32 labels follow (and the struct's label is
  0); the encoded image fills the rest.
- Index (`.idx`): one text line `key\\toffset` per record, offset in bytes into the `.rec`.
- InsightFace header record (MS1M, Glint, `faces_webface_112x112`): key 0 carries no image and
  flag > 0 with labels (first_identity_key, end_identity_key). Image records have keys
  1 .. first_identity_key - 1 and the identity index as label; identity records have keys
  first_identity_key .. end_identity_key - 1, no image, and labels (start_key, end_key): the
  half-open key range of that identity's images. Without a header record (flag 0 at key 0, or no
  key 0) every record in the index is an image.

Files may be local or on an object store (`gs://`, `core.paths`): a local `.rec` is memory-mapped;
one on an object store is read on demand, each record by a seek and a read of its bytes.

Memory stays bounded by the files: every length a part header declares is checked against the
bytes left in the `.rec` before it is read, offsets and keys must fit in int64, and the identity
key range of a header record against the keys the index lists before any array of that size is
made. The reader refuses bad input with `BadInputError`, naming the file and the line or record.
"""

from __future__ import annotations

import contextlib
import copy
import io
import mmap
import numbers
import os
import struct
import threading
from typing import BinaryIO, NamedTuple

import numpy as np

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError

RECORD_MAGIC = 0xCED7230A
DATASET_HEADER_KEY = 0
_MAGIC_BYTES = struct.pack("<I", RECORD_MAGIC)
_PART_HEADER = struct.Struct("<II")
_LENGTH_BITS = 29
_MAX_PART_LENGTH = (1 << _LENGTH_BITS) - 1
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3
_IR_HEADER = struct.Struct("<IfQQ")


class IRHeader(NamedTuple):
    """MXNet's image-record header.

    flag: the number of float32 labels stored after the struct (0: the scalar `label` is the
    label); label: a float when flag == 0, else a float32 array of `flag` labels; id, id2: record
    ids (uint64), free for the writer's use.
    """

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def _padding(length: int) -> int:
    return -length % 4


def _part(cflag: int, data: bytes) -> bytes:
    lrecord = (cflag << _LENGTH_BITS) | len(data)
    return _PART_HEADER.pack(RECORD_MAGIC, lrecord) + data + bytes(_padding(len(data)))


def frame_record(record: bytes) -> bytes:
    """The RecordIO bytes of one record: its parts, split at 4-byte-aligned magic words, padded."""
    if len(record) > _MAX_PART_LENGTH:
        raise ValueError(f"record must be shorter than 2**29 bytes, got {len(record)} bytes")
    starts = [0]
    for offset in range(0, len(record) - 3, 4):
        if record[offset : offset + 4] == _MAGIC_BYTES:
            starts.append(offset + 4)
    if len(starts) == 1:
        return _part(_WHOLE, record)
    ends = [start - 4 for start in starts[1:]] + [len(record)]
    flags = [_FIRST] + [_MIDDLE] * (len(starts) - 2) + [_LAST]
    return b"".join(
        _part(cflag, record[start:end]) for cflag, start, end in zip(flags, starts, ends)
    )


def unframe_record(buffer: bytes | mmap.mmap | RemoteBytes, offset: int = 0) -> tuple[bytes, int]:
    """The record whose first part starts at byte `offset` of `buffer` (anything with a length
    and byte slices), and the offset just past its last part. Raises ValueError on a bad magic
    word, a misplaced part flag or truncation."""
    parts = []
    expected_flags = (_WHOLE, _FIRST)
    while True:
        if offset + _PART_HEADER.size > len(buffer):
            raise ValueError(f"truncated record: part header at byte {offset} runs past the end")
        magic, lrecord = _PART_HEADER.unpack(buffer[offset : offset + _PART_HEADER.size])
        if magic != RECORD_MAGIC:
            raise ValueError(
                f"bad magic 0x{magic:08X} at byte {offset} (expected 0x{RECORD_MAGIC:08X})"
            )
        cflag, length = lrecord >> _LENGTH_BITS, lrecord & _MAX_PART_LENGTH
        if cflag not in expected_flags:
            raise ValueError(
                f"part at byte {offset} has continuation flag {cflag}, expected "
                f"one of {expected_flags}"
            )
        start = offset + _PART_HEADER.size
        if start + length > len(buffer):
            raise ValueError(
                f"truncated record: part at byte {offset} declares {length} bytes, "
                f"{len(buffer) - start} remain"
            )
        parts.append(buffer[start : start + length])
        offset = start + length + _padding(length)
        if cflag in (_WHOLE, _LAST):
            return _MAGIC_BYTES.join(parts), offset
        expected_flags = (_MIDDLE, _LAST)


def pack_record(header: IRHeader, image: bytes) -> bytes:
    """The record payload: the `<IfQQ` struct, then `flag` float32 labels when flag > 0, then
    the encoded image. `header.flag` must be 0 with a scalar label, or the number of labels."""
    if isinstance(header.label, numbers.Real):
        if header.flag != 0:
            raise ValueError(f"header.flag must be 0 with a scalar label, got {header.flag}")
        return _IR_HEADER.pack(0, header.label, header.id, header.id2) + image
    labels = np.asarray(header.label, dtype="<f4")
    if labels.ndim != 1 or header.flag != labels.size or labels.size == 0:
        raise ValueError(
            f"header.flag must equal the number of labels (> 0), got flag {header.flag} "
            f"with labels of shape {labels.shape}"
        )
    return _IR_HEADER.pack(header.flag, 0.0, header.id, header.id2) + labels.tobytes() + image


def unpack_record(record: bytes) -> tuple[IRHeader, bytes]:
    """Inverse of `pack_record`: (header, encoded image)."""
    if len(record) < _IR_HEADER.size:
        raise ValueError(f"record of {len(record)} bytes is shorter than its 24-byte header")
    flag, label, key_id, key_id2 = _IR_HEADER.unpack_from(record)
    image_start = _IR_HEADER.size + 4 * flag
    if flag > 0:
        if image_start > len(record):
            raise ValueError(f"record of {len(record)} bytes is too short for its {flag} labels")
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=_IR_HEADER.size)
    return IRHeader(flag, label, key_id, key_id2), record[image_start:]


def format_index_line(key: int, offset: int) -> str:
    """One line of a `.idx` file."""
    return f"{key}\t{offset}\n"


_INT64 = range(-(2**63), 2**63)


def read_index(idx_path: paths.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of a `.idx` file, int64, in file order. Raises BadInputError naming the
    file and the line of a malformed line (not two integers, a negative offset, a number beyond
    int64), and naming the file for a repeated key."""
    keys, offsets = [], []
    # Read as a text file would be: ASCII (undecodable bytes replaced), universal newlines.
    text = paths.Path(idx_path).read_bytes().decode("ascii", errors="replace")
    for line_number, line in enumerate(io.StringIO(text, newline=None), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"line {line_number}"
        try:
            key, offset = (int(field) for field in fields)
        except ValueError:
            raise BadInputError(
                idx_path, f"expected 'key<TAB>offset', got {line.rstrip()[:80]!r}", where
            ) from None
        if offset < 0:
            raise BadInputError(idx_path, f"negative offset {offset}", where)
        for name, number in (("key", key), ("offset", offset)):
            if number not in _INT64:
                raise BadInputError(idx_path, f"{name} {number} does not fit in 64 bits", where)
        keys.append(key)
        offsets.append(offset)
    keys, offsets = np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
    unique_keys, counts = np.unique(keys, return_counts=True)
    if np.any(counts > 1):
        raise BadInputError(
            idx_path, f"key {unique_keys[np.argmax(counts > 1)]} appears {counts.max()} times"
        )
    return keys, offsets


def default_index_path(rec_path: str) -> str:
    """`train.rec` -> `train.idx`."""
    return os.path.splitext(rec_path)[0] + ".idx"  # a string operation, right for URLs too


class RemoteBytes:
    """The bytes of a file on an object store, read on demand: the part of `mmap`'s interface
    that `unframe_record` uses (`len` and slices), each slice one seek and one read, under a
    lock so that threads may share it."""

    def __init__(self, path: str):
        self._path = paths.Path(path)
        self._size = self._path.stat().length
        self._opened = contextlib.ExitStack()  # some epath backends open as a context manager
        self._file: BinaryIO = self._opened.enter_context(self._path.open("rb"))
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: slice) -> bytes:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("RemoteBytes supports contiguous slices only")
        start, stop, _ = index.indices(self._size)
        if stop <= start:
            return b""
        with self._lock:
            self._file.seek(start)
            return self._file.read(stop - start)

    def close(self) -> None:
        self._opened.close()


def _integer_label(label: float, rec_path: str, where: str) -> int:
    if not float(label).is_integer() or label < 0:
        raise BadInputError(rec_path, f"label {label} is not a non-negative integer", where)
    return int(label)


class RecordIOReader:
    """Random access to the images of an indexed RecordIO file.

    Keys are those of the `.idx` file; positions 0 .. len - 1 index `image_keys`, the image
    records (all of them, or those listed by the InsightFace header record). `reader[position]`
    is {'image_bytes': encoded image, 'label': int}, the label taken from the record's own
    header (its first label when it has several): a grain RandomAccessDataSource. The reader is
    picklable (the file is reopened, the index is not re-read) and safe to read from threads.

    On opening, the index is checked against the data: every offset must lie in the file, point
    at the start of a record (for a local file; on an object store that costs a request per
    record, so there it is checked when the record is read), and the record furthest in the file
    must be complete; a header record's key ranges must be present in the index. Records are
    otherwise checked when read.
    """

    def __init__(self, rec_path: str, idx_path: str | None = None):
        self.rec_path = rec_path
        self.idx_path = default_index_path(rec_path) if idx_path is None else idx_path
        for role, path in (("record file", rec_path), ("index file", self.idx_path)):
            if not paths.Path(path).is_file():
                raise BadInputError(path, f"the RecordIO {role} does not exist")
        keys, offsets = read_index(self.idx_path)
        if keys.size == 0:
            raise BadInputError(self.idx_path, "the index lists no records")
        order = np.argsort(keys)
        self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]
        self._data = self._open()
        self._check_offsets()
        self.image_keys, self.identity_ranges = keys, None
        if self._has_dataset_header():
            self.image_keys, self.identity_ranges = self._read_dataset_header()

    def _open(self) -> mmap.mmap | RemoteBytes:
        """The record file's bytes: memory-mapped when local, read on demand on an object store."""
        if paths.is_url(self.rec_path):
            data = RemoteBytes(self.rec_path)
            if len(data) == 0:
                raise BadInputError(self.rec_path, "the record file is empty")
            return data
        with open(self.rec_path, "rb") as rec_file:  # local: mmap needs a file descriptor
            if os.fstat(rec_file.fileno()).st_size == 0:
                raise BadInputError(self.rec_path, "the record file is empty")
            return mmap.mmap(rec_file.fileno(), 0, access=mmap.ACCESS_READ)

    def _check_offsets(self) -> None:
        size = len(self._data)
        offsets = self._sorted_offsets

        def refuse(bad: np.ndarray, problem: str) -> None:
            if np.any(bad):
                key, offset = self._sorted_keys[bad][0], offsets[bad][0]
                raise BadInputError(
                    self.idx_path,
                    f"disagrees with {self.rec_path}: key {key} at offset {offset} {problem} "
                    f"({np.count_nonzero(bad)} such keys)",
                )

        # Compared so that an offset near 2**63 cannot overflow into the file.
        refuse(offsets > size - _PART_HEADER.size, f"lies beyond the end of the file ({size} B)")
        refuse(offsets % 4 != 0, "is not 4-byte aligned, so it cannot start a record")
        if isinstance(self._data, mmap.mmap):
            words = np.frombuffer(self._data, dtype="<u4", count=size // 4)
            try:
                refuse(words[offsets // 4] != RECORD_MAGIC, "does not point at the magic word")
                refuse(words[offsets // 4 + 1] >> _LENGTH_BITS > _FIRST, "points inside a record")
            finally:
                del words  # an exported buffer would keep the mmap from closing
        self.read(int(self._sorted_keys[np.argmax(offsets)]))

    def _has_dataset_header(self) -> bool:
        return DATASET_HEADER_KEY in self and self.read(DATASET_HEADER_KEY)[0].flag > 0

    def _read_dataset_header(self) -> tuple[np.ndarray, np.ndarray]:
        """The image keys and the [num_identities, 2] half-open image-key ranges of the
        identities, as the header record and the identity records give them."""
        header, _ = self.read(DATASET_HEADER_KEY)
        where = f"header record {DATASET_HEADER_KEY}"
        if header.flag < 2:
            raise BadInputError(
                self.rec_path, f"has {header.flag} label, expected 2 (identity key range)", where
            )
        first, end = (_integer_label(label, self.rec_path, where) for label in header.label[:2])
        if not 1 <= first <= end:
            raise BadInputError(
                self.rec_path,
                f"gives identity keys [{first}, {end}), expected 1 <= first <= end",
                where,
            )
        if end - 1 > len(self._sorted_keys):  # before arrays of end - 1 keys are made
            raise BadInputError(
                self.idx_path,
                f"disagrees with the header record of {self.rec_path}: keys 1 .. {end - 1} "
                f"expected, the index lists {len(self._sorted_keys)} keys",
            )
        expected = np.arange(1, end, dtype=np.int64)
        missing = expected[~np.isin(expected, self._sorted_keys)]
        if missing.size:
            raise BadInputError(
                self.idx_path,
                f"disagrees with the header record of {self.rec_path}: keys 1 .. {end - 1} "
                f"expected, {missing.size} missing (first: {missing[0]})",
            )
        ranges = np.empty((end - first, 2), dtype=np.int64)
        for row, key in enumerate(range(first, end)):
            identity, _ = self.read(key)
            where = f"identity record {key}"
            if identity.flag < 2:
                raise BadInputError(
                    self.rec_path, f"has {identity.flag} labels, expected 2 (key range)", where
                )
            ranges[row] = [
                _integer_label(label, self.rec_path, where) for label in identity.label[:2]
            ]
            if not 1 <= ranges[row, 0] <= ranges[row, 1] <= first:
                raise BadInputError(
                    self.rec_path,
                    f"gives image keys [{ranges[row, 0]}, {ranges[row, 1]}) outside [1, {first})",
                    where,
                )
        return np.arange(1, first, dtype=np.int64), ranges

    def __contains__(self, key: int) -> bool:
        position = np.searchsorted(self._sorted_keys, key)
        return position < self._sorted_keys.size and self._sorted_keys[position] == key

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """(header, encoded image) of the record with index key `key`."""
        if key not in self:
            raise KeyError(f"key {key} is not in the index {self.idx_path}")
        offset = int(self._sorted_offsets[np.searchsorted(self._sorted_keys, key)])
        try:
            return unpack_record(unframe_record(self._data, offset)[0])
        except ValueError as error:
            raise BadInputError(
                self.rec_path, str(error), f"record {key} at offset {offset}"
            ) from None

    def __len__(self) -> int:
        return len(self.image_keys)

    def __getitem__(self, position: int) -> dict[str, bytes | int]:
        if not -len(self) <= position < len(self):
            raise IndexError(f"position {position} is out of range for {len(self)} images")
        key = int(self.image_keys[position])
        header, image = self.read(key)
        label = header.label if header.flag == 0 else header.label[0]
        return {
            "image_bytes": image,
            "label": _integer_label(label, self.rec_path, f"record {key}"),
        }

    def shard(self, index: int, count: int) -> RecordIOReader:
        """A reader of the `index`-th of `count` contiguous, near-equal blocks of the images
        (sizes differ by at most one); the blocks are disjoint and cover every image."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if not 0 <= index < count:
            raise ValueError(f"index must be in [0, {count}), got {index}")
        start, stop = (len(self) * i // count for i in (index, index + 1))
        shard = copy.copy(self)
        shard.image_keys = self.image_keys[start:stop]
        return shard

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_data"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._data = self._open()

    def __repr__(self) -> str:
        return f"RecordIOReader({self.rec_path!r}, {self.idx_path!r}, {len(self)} images)"
