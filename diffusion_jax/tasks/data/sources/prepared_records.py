"""Reading one record of a prepared TFDS dataset, with a failure that names the dataset and record.

A prepared dataset's files can be damaged after they were checked: cut short, overwritten, half
copied. Reading a record of such a file fails deep inside ArrayRecord (`RuntimeError: Corrupted
Riegeli/records file ...`) or inside TFDS's image decoding (PIL's `cannot identify image file
<_io.BytesIO ...>`), naming neither the dataset nor the record. `read_record` turns those
failures into a `BadInputError` that names both, keeping the original as its cause (`--debug`
shows it). `NamedRecords` is a grain source that reads every record so.
"""

from __future__ import annotations

import struct
from typing import Any

from diffusion_jax.core.bad_input import BadInputError

# What ArrayRecord (RuntimeError) and PIL's decoders (the others) raise on damaged data.
READ_ERRORS = (RuntimeError, OSError, ValueError, EOFError, SyntaxError, struct.error)


def read_record(records: Any, index: int, dataset: str) -> Any:
    """`records[index]`; a failure to read or decode it raises `BadInputError(dataset, reason,
    "record <index>")`."""
    try:
        return records[index]
    except BadInputError:
        raise  # already names what it read
    except READ_ERRORS as error:
        raise BadInputError(
            dataset,
            f"cannot read or decode it ({type(error).__name__}: {error}); the dataset's files "
            "are damaged, prepare it again",
            where=f"record {index}",
        ) from error


class NamedRecords:
    """A grain random-access source: the records of `records`, read by `read_record`, so that a
    damaged record names `dataset` (a directory, or a name and directory) and its index."""

    def __init__(self, records: Any, dataset: str):
        self._records, self._dataset = records, dataset

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Any:
        return read_record(self._records, index, self._dataset)

    def __repr__(self) -> str:
        # grain compares its sources' reprs when it restores a data iterator: the wrapped
        # source's keeps checkpoints resumable across this wrapper and a moved data dir.
        return repr(self._records)
