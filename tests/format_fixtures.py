"""Writers of small files in the published formats the data readers accept.

Written from the format descriptions alone (dmlc-core RecordIO framing, MXNet's IRHeader,
InsightFace's header and identity records, Python 2's pickle protocol 2, LFW's pairs.txt) and
never from the readers under test, so that a shared misreading cannot make a test pass.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import PIL.Image

RECORDIO_MAGIC = (0xCED7230A).to_bytes(4, "little")


def tiny_image(seed: int, image_format: str = "PNG", size: int = 4) -> bytes:
    """An encoded size x size RGB image of random colours."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    PIL.Image.fromarray(pixels).save(encoded, format=image_format)
    return encoded.getvalue()


def recordio_bytes(record: bytes) -> bytes:
    """dmlc-core RecordIO: the record cut at every magic word found at a multiple of 4 (the word
    itself dropped), each piece written as magic, (cflag << 29 | length), data, zero padding to
    4 bytes; cflag 0 for a single piece, else 1 first, 2 middle, 3 last."""
    pieces, piece_start = [], 0
    for word_start in range(0, len(record) // 4 * 4, 4):
        if record[word_start : word_start + 4] == RECORDIO_MAGIC:
            pieces.append(record[piece_start:word_start])
            piece_start = word_start + 4
    pieces.append(record[piece_start:])
    written = bytearray()
    for number, piece in enumerate(pieces):
        if len(pieces) == 1:
            cflag = 0
        else:
            cflag = 1 if number == 0 else 3 if number == len(pieces) - 1 else 2
        written += RECORDIO_MAGIC
        written += (cflag << 29 | len(piece)).to_bytes(4, "little")
        written += piece
        written += b"\x00" * ((4 - len(piece) % 4) % 4)
    return bytes(written)


def image_record(label: float | list[float], image: bytes, record_id: int = 0) -> bytes:
    """MXNet's IRHeader `<IfQQ` (flag, label, id, id2 = 0) and the image; a list of labels is
    written after the struct, with flag = their count and the struct's label 0."""
    if isinstance(label, list):
        header = struct.pack("<IfQQ", len(label), 0.0, record_id, 0)
        return header + struct.pack(f"<{len(label)}f", *label) + image
    return struct.pack("<IfQQ", 0, label, record_id, 0) + image


def write_recordio(rec_path: str, idx_path: str, records: list[tuple[int, bytes]]) -> dict:
    """Writes `records` [(key, record)] in order, with a `key\\toffset` line each in the index;
    returns {key: offset}."""
    offsets = {}
    with open(rec_path, "wb") as rec_file, open(idx_path, "w") as idx_file:
        for key, record in records:
            offsets[key] = rec_file.tell()
            rec_file.write(recordio_bytes(record))
            idx_file.write(f"{key}\t{offsets[key]}\n")
    return offsets


def insightface_records(identities: list[list[bytes]]) -> list[tuple[int, bytes]]:
    """An InsightFace training set: header record 0 with labels (first identity key, end
    identity key); images at keys 1 .. N labelled with their identity's index; then one record
    per identity with labels (its first image key, its end image key)."""
    num_images = sum(len(images) for images in identities)
    first_identity_key = num_images + 1
    records = [(0, image_record([first_identity_key, first_identity_key + len(identities)], b""))]
    identity_records, key = [], 1
    for identity, images in enumerate(identities):
        identity_records.append(
            (first_identity_key + identity, image_record([key, key + len(images)], b""))
        )
        for image in images:
            records.append((key, image_record(float(identity), image, record_id=key)))
            key += 1
    return records + identity_records


def python2_pickle(bins: list[bytes], issame_list: list[bool]) -> bytes:
    """What Python 2's `pickle.dump((bins, issame_list), f, protocol=2)` writes: str as
    SHORT_BINSTRING / BINSTRING, bools as NEWTRUE / NEWFALSE, lists as EMPTY_LIST then APPENDS
    in batches of 1000 (APPEND for a batch of one), a memo BINPUT after each container and
    string, TUPLE2, STOP."""
    stream = bytearray(b"\x80\x02")
    memo_index = 0

    def memoize() -> None:
        nonlocal memo_index
        if memo_index < 256:
            stream.extend(b"q" + bytes([memo_index]))
        else:
            stream.extend(b"r" + struct.pack("<I", memo_index))
        memo_index += 1

    def save(item: bytes | bool) -> None:
        if isinstance(item, bool):
            stream.extend(b"\x88" if item else b"\x89")
        elif len(item) < 256:
            stream.extend(b"U" + bytes([len(item)]) + item)
            memoize()
        else:
            stream.extend(b"T" + struct.pack("<i", len(item)) + item)
            memoize()

    for items in (bins, issame_list):
        stream.extend(b"]")
        memoize()
        for batch_start in range(0, len(items), 1000):
            batch = items[batch_start : batch_start + 1000]
            if len(batch) > 1:
                stream.extend(b"(")
            for item in batch:
                save(item)
            stream.extend(b"e" if len(batch) > 1 else b"a")
    stream.extend(b"\x86")
    memoize()
    stream.extend(b".")
    return bytes(stream)


def write_lfw_tree(
    pairs_path: str, image_root: str, folds: list[tuple[list[tuple], list[tuple]]], header: str
) -> None:
    """pairs.txt with first line `header` and, per fold, its matched lines (name, n1, n2) then
    its mismatched lines (name1, n1, name2, n2), tab-separated; and an empty file for each image
    at image_root/<name>/<name>_<n:04d>.jpg."""
    lines = [header]
    for matched, mismatched in folds:
        lines += ["\t".join(str(field) for field in pair) for pair in matched + mismatched]
        for name, *numbers in matched:
            for number in numbers:
                _touch(os.path.join(image_root, name, f"{name}_{number:04d}.jpg"))
        for name_a, number_a, name_b, number_b in mismatched:
            _touch(os.path.join(image_root, name_a, f"{name_a}_{number_a:04d}.jpg"))
            _touch(os.path.join(image_root, name_b, f"{name_b}_{number_b:04d}.jpg"))
    with open(pairs_path, "w") as pairs_file:
        pairs_file.write("\n".join(lines) + "\n")


def _touch(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "ab").close()


# ------------------------------------------------------------------------------ image files


def encode_image(image: PIL.Image.Image, image_format: str, **options) -> bytes:
    """`image` saved by PIL as `image_format` ("PNG", "JPEG", ...)."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """length, type, payload, CRC-32 of type + payload (PNG specification, section 5.3)."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height 8-bit RGB pixels, whose image data is an empty chunk."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"")
        + png_chunk(b"IEND", b"")
    )
