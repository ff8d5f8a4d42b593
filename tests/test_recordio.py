"""InsightFace RecordIO: the layout against an independent writer, the reader's random access,
labels, identity ranges and sharding, and its refusals of files whose index and data disagree."""

import io
import os
import pickle
import struct

import grain
import numpy as np
import PIL.Image
import pytest

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources import recordio
from tests import format_fixtures

IMAGES_PER_IDENTITY = (3, 1, 4, 2)
MAGIC = format_fixtures.RECORDIO_MAGIC


def _image_with_magic(seed: int) -> bytes:
    """A PNG followed by bytes that put the magic word at 4-byte-aligned record offsets (the
    record's 24-byte header keeps image offsets aligned): its record is framed in 3 parts."""
    png = format_fixtures.tiny_image(seed)
    return png + b"\x00" * (-len(png) % 4) + MAGIC + b"tail" + MAGIC + b"end"


@pytest.fixture(scope="module")
def identities() -> list[list[bytes]]:
    images = iter(range(100))
    identities = [
        [format_fixtures.tiny_image(next(images), "JPEG" if i % 2 else "PNG") for _ in range(n)]
        for i, n in enumerate(IMAGES_PER_IDENTITY)
    ]
    identities[2][1] = _image_with_magic(99)
    return identities


@pytest.fixture
def dataset(tmp_path, identities) -> tuple[str, str, dict]:
    """train.rec / train.idx of `identities`, and {key: offset}."""
    rec_path, idx_path = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    records = format_fixtures.insightface_records(identities)
    offsets = format_fixtures.write_recordio(rec_path, idx_path, records)
    return rec_path, idx_path, offsets


# --- the layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [b"", b"abc", b"abcd", MAGIC, b"ab" + MAGIC, b"abcd" + MAGIC + MAGIC + b"xy" + MAGIC],
    ids=["empty", "padded", "aligned", "magic-only", "unaligned-magic", "aligned-magics"],
)
def test_framing_matches_the_independent_writer_and_round_trips(record):
    framed = recordio.frame_record(record)
    assert framed == format_fixtures.recordio_bytes(record)
    assert len(framed) % 4 == 0
    assert recordio.unframe_record(framed + b"next") == (record, len(framed))


def test_framing_splits_at_aligned_magic_words_only():
    single = MAGIC + struct.pack("<I", 6) + b"ab" + MAGIC + b"\0\0"
    assert recordio.frame_record(b"ab" + MAGIC) == single
    first, last = 1 << 29 | 4, 3 << 29 | 2
    assert recordio.frame_record(b"abcd" + MAGIC + b"xy") == (
        MAGIC + struct.pack("<I", first) + b"abcd" + MAGIC + struct.pack("<I", last) + b"xy\0\0"
    )


@pytest.mark.parametrize("label", [7.0, [5.0, 9.0, 0.5]], ids=["scalar", "labels"])
def test_pack_record_matches_the_independent_writer_and_round_trips(label):
    flag = 0 if isinstance(label, float) else len(label)
    header = recordio.IRHeader(flag=flag, label=label, id=12, id2=0)
    packed = recordio.pack_record(header, b"jpeg")
    assert packed == format_fixtures.image_record(label, b"jpeg", record_id=12)
    unpacked, image = recordio.unpack_record(packed)
    assert image == b"jpeg"
    assert (unpacked.flag, unpacked.id, unpacked.id2) == (flag, 12, 0)
    np.testing.assert_array_equal(unpacked.label, label)


def test_pack_record_refuses_a_flag_that_disagrees_with_the_labels():
    with pytest.raises(ValueError, match="flag must equal the number of labels"):
        recordio.pack_record(recordio.IRHeader(flag=1, label=[1.0, 2.0], id=0, id2=0), b"")
    with pytest.raises(ValueError, match="flag must be 0 with a scalar label"):
        recordio.pack_record(recordio.IRHeader(flag=2, label=1.0, id=0, id2=0), b"")


def test_unframe_record_names_the_problem():
    framed = recordio.frame_record(b"abcdefgh")
    with pytest.raises(ValueError, match="bad magic"):
        recordio.unframe_record(b"\0" + framed[1:])
    with pytest.raises(ValueError, match="truncated record"):
        recordio.unframe_record(framed[:-5])
    with pytest.raises(ValueError, match="continuation flag 3"):
        recordio.unframe_record(MAGIC + struct.pack("<I", 3 << 29))


def test_format_index_line_is_what_mxnet_writes():
    assert recordio.format_index_line(17, 4096) == "17\t4096\n"


# --- the reader ---------------------------------------------------------------------------------


def test_reader_gives_images_labels_and_identity_ranges(dataset, identities):
    rec_path, _, _ = dataset
    reader = recordio.RecordIOReader(rec_path)
    num_images = sum(IMAGES_PER_IDENTITY)
    assert len(reader) == num_images
    np.testing.assert_array_equal(reader.image_keys, np.arange(1, num_images + 1))
    ends = np.cumsum(IMAGES_PER_IDENTITY) + 1
    starts = ends - IMAGES_PER_IDENTITY
    np.testing.assert_array_equal(reader.identity_ranges, np.stack([starts, ends], axis=1))
    expected = [(image, label) for label, images in enumerate(identities) for image in images]
    for position in [5, 0, num_images - 1, 4]:  # random access, out of order
        example = reader[position]
        assert example == {"image_bytes": expected[position][0], "label": expected[position][1]}
    header, image = reader.read(3)
    assert (header.flag, header.label, header.id) == (0, 0.0, 3)
    decoded = np.asarray(PIL.Image.open(io.BytesIO(reader[0]["image_bytes"])))
    original = np.asarray(PIL.Image.open(io.BytesIO(identities[0][0])))
    np.testing.assert_array_equal(decoded, original)


def test_labels_of_each_identity_range_are_its_index(dataset):
    reader = recordio.RecordIOReader(dataset[0])
    for identity, (start, end) in enumerate(reader.identity_ranges):
        labels = [reader.read(key)[0].label for key in range(start, end)]
        assert labels == [identity] * (end - start)


def test_record_split_at_magic_words_reads_back_whole(dataset, identities):
    reader = recordio.RecordIOReader(dataset[0])
    key = 1 + sum(IMAGES_PER_IDENTITY[:2]) + 1
    assert reader.read(key)[1] == identities[2][1] == _image_with_magic(99)


def test_without_header_record_every_indexed_record_is_an_image(tmp_path):
    rec_path, idx_path = str(tmp_path / "plain.rec"), str(tmp_path / "plain.idx")
    images = [format_fixtures.tiny_image(seed) for seed in range(3)]
    records = [
        (key, format_fixtures.image_record(float(label), image))
        for key, label, image in zip([0, 7, 3], [2, 0, 1], images)
    ]
    format_fixtures.write_recordio(rec_path, idx_path, records)
    reader = recordio.RecordIOReader(rec_path, idx_path)
    assert reader.identity_ranges is None
    np.testing.assert_array_equal(reader.image_keys, [0, 7, 3])
    assert [reader[i] for i in range(3)] == [
        {"image_bytes": image, "label": label} for image, label in zip(images, [2, 0, 1])
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_are_disjoint_contiguous_and_cover_the_images(dataset, count):
    reader = recordio.RecordIOReader(dataset[0])
    shards = [reader.shard(index, count) for index in range(count)]
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    np.testing.assert_array_equal(np.concatenate([s.image_keys for s in shards]), reader.image_keys)
    assert shards[-1][len(shards[-1]) - 1] == reader[len(reader) - 1]


def test_shard_refuses_bad_arguments(dataset):
    reader = recordio.RecordIOReader(dataset[0])
    with pytest.raises(ValueError, match="index must be in \\[0, 2\\), got 2"):
        reader.shard(2, 2)
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        reader.shard(0, 0)


def test_reader_survives_pickling_for_worker_processes(dataset):
    reader = recordio.RecordIOReader(dataset[0]).shard(1, 2)
    copy = pickle.loads(pickle.dumps(reader))
    assert len(copy) == len(reader)
    assert [copy[i] for i in range(len(copy))] == [reader[i] for i in range(len(reader))]


def test_grain_reads_it_as_a_data_source_sharded_over_two_processes(dataset):
    reader = recordio.RecordIOReader(dataset[0])
    seen = []
    for process in range(2):
        sampler = grain.samplers.IndexSampler(
            num_records=len(reader),
            shard_options=grain.sharding.ShardOptions(process, 2, drop_remainder=False),
            shuffle=True,
            num_epochs=1,
            seed=3,
        )
        loader = grain.DataLoader(data_source=reader, sampler=sampler, worker_count=0)
        seen.append(sorted((e["image_bytes"], e["label"]) for e in loader))
    assert not set(seen[0]) & set(seen[1])
    everything = [(e["image_bytes"], e["label"]) for e in (reader[i] for i in range(len(reader)))]
    assert sorted(seen[0] + seen[1]) == sorted(everything)


def test_read_of_an_unknown_key_names_the_index(dataset):
    with pytest.raises(KeyError, match="key 99 is not in the index .*train.idx"):
        recordio.RecordIOReader(dataset[0]).read(99)


# --- refusals -----------------------------------------------------------------------------------


def test_missing_index_is_refused_naming_it(dataset):
    rec_path, idx_path, _ = dataset
    os.remove(idx_path)
    with pytest.raises(BadInputError, match=f"{idx_path}: the RecordIO index file does not exist"):
        recordio.RecordIOReader(rec_path)


def test_truncated_record_file_is_refused_on_opening(dataset):
    rec_path, _, _ = dataset
    with open(rec_path, "r+b") as rec_file:
        rec_file.truncate(os.path.getsize(rec_path) - 6)
    with pytest.raises(BadInputError, match=f"{rec_path}, record .* truncated record"):
        recordio.RecordIOReader(rec_path)


def test_bad_magic_is_refused_naming_the_files(dataset):
    rec_path, idx_path, offsets = dataset
    with open(rec_path, "r+b") as rec_file:
        rec_file.seek(offsets[3])
        rec_file.write(b"\xff")
    message = f"{idx_path}: disagrees with {rec_path}: key 3 .*magic"
    with pytest.raises(BadInputError, match=message):
        recordio.RecordIOReader(rec_path)


@pytest.mark.parametrize(
    "shift, problem",
    [
        (8, "points inside a record|does not point at the magic"),
        (2, "not 4-byte aligned"),
        (10**6, "beyond the end of the file"),
        (2**63 - 4096, "beyond the end of the file"),  # offset + header size overflows int64
    ],
)
def test_index_offsets_that_miss_records_are_refused(dataset, shift, problem):
    rec_path, idx_path, offsets = dataset
    with open(idx_path, "w") as idx_file:
        for key, offset in offsets.items():
            idx_file.write(f"{key}\t{offset + shift * (key == 2)}\n")
    message = f"{idx_path}: disagrees with {rec_path}: key 2 .*({problem})"
    with pytest.raises(ValueError, match=message):
        recordio.RecordIOReader(rec_path)


def test_index_that_lacks_keys_of_the_header_record_is_refused(dataset):
    rec_path, idx_path, offsets = dataset
    with open(idx_path, "w") as idx_file:
        idx_file.writelines(f"{key}\t{offset}\n" for key, offset in offsets.items() if key != 4)
    with pytest.raises(BadInputError, match=f"{idx_path}: disagrees with the header .*first: 4"):
        recordio.RecordIOReader(rec_path)


@pytest.mark.parametrize(
    "extra_line, problem",
    [("12 abc", "expected 'key<TAB>offset', got '12 abc'"), ("3\t0", "key 3 appears 2 times")],
)
def test_malformed_index_is_refused_naming_file_and_line(dataset, extra_line, problem):
    rec_path, idx_path, offsets = dataset
    with open(idx_path, "a") as idx_file:
        idx_file.write(extra_line + "\n")
    location = f"{idx_path}, line {len(offsets) + 1}" if "abc" in extra_line else idx_path
    with pytest.raises(BadInputError, match=f"{location}: {problem}"):
        recordio.RecordIOReader(rec_path)


@pytest.mark.parametrize(
    "extra_line, problem",
    [
        ("9\t99999999999999999999", "offset 99999999999999999999 does not fit in 64 bits"),
        ("99999999999999999999\t0", "key 99999999999999999999 does not fit in 64 bits"),
    ],
)
def test_index_numbers_beyond_int64_are_refused_naming_file_and_line(dataset, extra_line, problem):
    rec_path, idx_path, offsets = dataset
    with open(idx_path, "a") as idx_file:
        idx_file.write(extra_line + "\n")
    with pytest.raises(BadInputError, match=f"{idx_path}, line {len(offsets) + 1}: {problem}"):
        recordio.RecordIOReader(rec_path)


def test_a_header_record_claiming_more_keys_than_the_index_is_refused_before_allocating(
    tmp_path, identities
):
    rec_path, idx_path = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    records = format_fixtures.insightface_records(identities)
    records[0] = (0, format_fixtures.image_record([11.0, 1e12], b""))  # 10^12 identity keys
    format_fixtures.write_recordio(rec_path, idx_path, records)
    message = f"{idx_path}: disagrees with the header record of {rec_path}: keys 1 .. 999999995903"
    with pytest.raises(BadInputError, match=message):
        recordio.RecordIOReader(rec_path)
