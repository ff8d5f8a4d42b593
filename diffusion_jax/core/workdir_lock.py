"""One run per workdir: a lock that a run holds on its workdir while it runs, so that a second run
started on the same workdir refuses to start instead of writing beside the first.

`hold(path, command)` takes the lock at `path` (`RunLayout.lock`, a file or object in the
workdir) for the rest of the process's life; `main` takes it for every mode but `generate` and
`validate_dataset`, whose workers share a workdir by design. Its form depends on where the
workdir lies:

- A local directory: an OS file lock (`fcntl.flock`, exclusive, not waiting) on the file, which
  holds the holder's description (`Holder`) for the refusal message. The operating system
  releases it when the holding process exits, however it exits (SIGKILL and crashes included),
  so it is never left behind; the file itself stays, meaning nothing while unlocked. A child
  forked without exec shares the lock and holds it while it outlives its parent. On a file system
  without flock (some network file systems; Lustre without its `flock` mount option) a warning
  says the run goes on unlocked.
- Cloud Storage (`gs://`): a lease object holding the holder's description and an expiry
  `lease_seconds` ahead (LEASE_SECONDS), which a background thread renews every `renew_seconds`
  (RENEW_SECONDS) and `release()` (at exit) deletes. The lease is
  created, renewed, taken over and deleted with Cloud Storage's generation preconditions
  (`paths.write_if_generation`): each write names the generation of the object it replaces (0:
  none), which Cloud Storage checks and writes in one step, so of runs racing for the lease
  exactly one gets it. A second run is refused while the lease is unexpired; it takes the lease
  over once it has expired (its holder died without releasing it: SIGKILL, a lost host) or at
  once when the holder ran on this host and its process no longer exists (a reused pid counts
  as alive: the lease then waits for its expiry). Two windows remain.
  Expiry is judged by each host's clock, so the clocks must agree to well within
  `lease_seconds - renew_seconds`. And a holder that cannot renew for `lease_seconds` (stalled,
  or cut off from storage) loses the lease to the next run while it still runs: it learns so at
  its next renewal, at most `renew_seconds` later, and stops (`on_lost`, by default a
  KeyboardInterrupt in its main thread); until then both runs may write.
- Another object store (`s3://`): no lock; a warning says so.

With several JAX processes (`--distributed`) only process 0 takes the lock (the processes of one
job share the workdir) and broadcasts whether it got it: when it did not, `hold` raises
`WorkdirLocked` in every process, process 0's naming the holder, so the whole job stops before
writing anything.
"""

import _thread
import atexit
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from diffusion_jax.core import paths

LEASE_SECONDS = 120.0
RENEW_SECONDS = 30.0
# Lease writes lost to other runs' writes in one acquisition before giving up.
_LEASE_ATTEMPTS = 5


class WorkdirLocked(Exception):
    """Another run holds the workdir's lock; the message names it and what to do."""


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: host, process, when it took the lock, its command line, a token unique
    to that acquisition and, for a lease, when it expires (seconds since the epoch)."""

    host: str
    pid: int
    since: str
    command: str
    token: str
    expires: float = 0.0

    @classmethod
    def this_process(cls, command: str) -> "Holder":
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            since=_utc(time.time()),
            command=command,
            token=uuid.uuid4().hex,
        )

    def to_bytes(self) -> bytes:
        return paths.json_bytes(dataclasses.asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Holder | None":
        """The holder written in `data`; None when `data` holds none (an empty or foreign file)."""
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.since}, running `{self.command}`"

    def is_dead_here(self) -> bool:
        """Whether the holder ran on this host and its process no longer exists."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False


def _holder_text(holder: Holder | None) -> str:
    return holder.describe() if holder else "a run whose description is not written (yet)"


class FileLock:
    """The OS file lock on a local lock file (module docstring); `release()` unlocks it."""

    def __init__(self, path: paths.PathLike, command: str):
        self.path = paths.resolve(path)
        self.holder = Holder.this_process(command)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.from_bytes(os.pread(descriptor, 1 << 16, 0))
            os.close(descriptor)
            raise WorkdirLocked(
                f"Another run holds the workdir {self.path.parent}: {_holder_text(holder)}. Wait "
                "for it to finish, or use another --workdir. Its lock is an OS file lock on "
                f"{self.path}, which the operating system releases when that process exits, "
                "however it exits, so that run is still alive; deleting the file would not stop "
                "it, only let two runs write one workdir."
            ) from None
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            logging.warning(
                "The file system of %s offers no file locks (%s): this run goes on without "
                "locking its workdir, so make sure no other run uses it.",
                self.path,
                error,
            )
            self._descriptor = None
            return
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, self.holder.to_bytes(), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None


class Lease:
    """The lease object on Cloud Storage (module docstring): taken on construction, renewed by a
    background thread until `release()`, which deletes it. `on_lost` is called (from that thread)
    when the renewal finds the lease taken over by another run."""

    def __init__(
        self,
        url: paths.PathLike,
        command: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        on_lost: Callable[[], None] = _thread.interrupt_main,
    ):
        if not 0 < renew_seconds < lease_seconds:
            raise ValueError(f"renew_seconds={renew_seconds} must be in (0, {lease_seconds}).")
        self.url = os.fspath(url)
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self._on_lost = on_lost
        self.holder = Holder.this_process(command)
        self.lost = False
        self._generation = self._take()
        self._released = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="workdir-lease", daemon=True)
        self._renewer.start()

    def _description(self) -> bytes:
        expires = time.time() + self.lease_seconds
        return dataclasses.replace(self.holder, expires=expires).to_bytes()

    def _take(self) -> int:
        """Writes the lease where there is none, or over an expired or dead holder's; returns its
        generation. Raises `WorkdirLocked` while another run holds it."""
        holder = None
        for _ in range(_LEASE_ATTEMPTS):
            current = paths.read_with_generation(self.url)
            expected = 0
            if current is not None:
                data, expected = current
                holder = Holder.from_bytes(data)
                if holder is not None and holder.token == self.holder.token:
                    return expected  # our own write, whose reply was lost and retried
                if (
                    holder is not None
                    and time.time() < holder.expires
                    and not holder.is_dead_here()
                ):
                    raise WorkdirLocked(self._refusal(holder))
            written = paths.write_if_generation(self.url, self._description(), expected)
            if written is not None:
                if current is not None:
                    logging.warning(
                        "Took over the workdir lease %s from %s (expired at %s, or its process "
                        "is gone).",
                        self.url,
                        _holder_text(holder),
                        _utc(holder.expires) if holder else "?",
                    )
                return written
        raise WorkdirLocked(
            f"Other runs kept writing the workdir lease {self.url} while this one tried to take "
            f"it ({_LEASE_ATTEMPTS} times); the last holder seen: {_holder_text(holder)}."
        )

    def _refusal(self, holder: Holder) -> str:
        workdir = self.url.rsplit("/", 1)[0]
        return (
            f"Another run holds the workdir {workdir}: {holder.describe()}. Its lease {self.url} "
            f"expires at {_utc(holder.expires)} unless renewed, which the holder does every "
            f"{self.renew_seconds:g} s while it runs. Wait for it to finish, or use another "
            "--workdir. If that run is dead (killed with SIGKILL, its host lost), this command "
            f"takes the lease over once it has expired; or delete {self.url} to start at once."
        )

    def _renew(self) -> None:
        while not self._released.wait(self.renew_seconds):
            try:
                written = paths.write_if_generation(self.url, self._description(), self._generation)
            except Exception as error:  # storage unreachable: the lease lasts, try again later
                logging.warning("Could not renew the workdir lease %s: %s", self.url, error)
                continue
            if written is None:
                self.lost = True
                logging.error(
                    "The workdir lease %s was taken over by another run (this one could not "
                    "renew it for %g s); stopping so that two runs do not write one workdir.",
                    self.url,
                    self.lease_seconds,
                )
                self._on_lost()
                return
            self._generation = written

    def release(self) -> None:
        self._released.set()
        self._renewer.join()
        if not self.lost:
            paths.delete_if_generation(self.url, self._generation)


def acquire(path: paths.PathLike, command: str, **lease_options) -> FileLock | Lease | None:
    """Takes the lock at `path` for this process (module docstring) or raises `WorkdirLocked`
    naming its holder; None where the workdir cannot be locked (warned). `lease_options` go to
    `Lease` on Cloud Storage."""
    text = os.fspath(path)
    if text.startswith("gs://"):
        return Lease(text, command, **lease_options)
    if paths.is_url(text):
        logging.warning("Workdir locks need a local path or gs://; %s is not locked.", text)
        return None
    return FileLock(text, command)


def hold(path: paths.PathLike, command: str) -> None:
    """Takes the lock at `path` for the rest of this process's life or raises `WorkdirLocked`
    naming the run that holds it. It is released when the process exits: at exit (a lease is
    deleted then), or by the operating system whatever ends the process (a file lock). With
    several JAX processes, process 0 takes it for the job and every process raises when it could
    not (module docstring)."""
    lock, failure = None, None
    if jax.process_index() == 0:
        try:
            lock = acquire(path, command)
        except Exception as error:  # the others must hear of it before process 0 raises
            failure = error
    taken = failure is None
    if jax.process_count() > 1:
        taken = bool(multihost_utils.broadcast_one_to_all(np.int32(taken)))
    if failure is not None:
        raise failure
    if not taken:
        raise WorkdirLocked(
            f"Process 0 of this job could not take the lock of the workdir ({path}); its log "
            "names the run that holds it."
        )
    if lock is not None:
        atexit.register(lock.release)
