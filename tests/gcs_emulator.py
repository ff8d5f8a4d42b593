"""A local Cloud Storage emulator for the tests: `gcp-storage-emulator`, patched where TensorStore
(Orbax's array storage) and gcsfs need what real Cloud Storage does.

    with running_emulator(bucket="test-bucket") as endpoint:
        environment = {**os.environ, **client_environment(endpoint)}
        subprocess.run([... "--workdir=gs://test-bucket/run"], env=environment)

`client_environment` points every client the project reaches Cloud Storage through at the
emulator: etils.epath (through fsspec/gcsfs), google-cloud-storage (Orbax lists buckets with it),
TensorStore, and array_record's C++ client.

Patches (to the emulator, not to the code under test):
  * Media downloads get the x-goog-generation / -metageneration / -stored-content-length headers
    real Cloud Storage sends: TensorStore reads an object's generation from them, and OCDBT's
    conditional writes fail without it.
  * The generation preconditions ifGenerationMatch / ifGenerationNotMatch on reads, uploads and
    deletes answer 412 / 304 as Cloud Storage does (OCDBT's atomic commits rely on them).
  * objects.move, which gcsfs tries before copy + delete (the stock emulator answers 501 and
    gcsfs retries it for half a minute), as copy + delete.

Run as `python tests/gcs_emulator.py --port=0 --bucket=NAME`: it prints `READY <port>` once
serving and exits when its stdin closes (so it never outlives the test process).
"""

import argparse
import contextlib
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus


def client_environment(endpoint: str) -> dict[str, str]:
    """Environment variables that send every Cloud Storage client to `endpoint`."""
    return {
        # epath through fsspec/gcsfs (TensorFlow's GCS client cannot be pointed elsewhere).
        "EPATH_USE_TF": "false",
        "STORAGE_EMULATOR_HOST": endpoint,  # gcsfs and google-cloud-storage, anonymously
        "FSSPEC_GCS_TOKEN": "anon",
        # gcsfs's default class asks a gRPC control API the emulator lacks on every call.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": endpoint,  # Orbax's array data
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "unused-token",
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,  # array_record's C++ client
        "GOOGLE_CLOUD_PROJECT": "test-project",
    }


@contextlib.contextmanager
def running_emulator(bucket: str, timeout: float = 60.0) -> Iterator[str]:
    """Runs the patched emulator in a child process on a free port with `bucket` created;
    yields its endpoint, http://127.0.0.1:PORT."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--port=0", f"--bucket={bucket}", "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        line = process.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"the emulator did not start (exit {process.poll()}): {line!r}")
        endpoint = f"http://127.0.0.1:{int(line.split()[1])}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(endpoint + "/", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stdin.close()


def patch_emulator():
    from gcp_storage_emulator import server, settings
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    if getattr(server, "_proto_patched", False):
        return

    def move(request, response, storage, *args, **kwargs):
        bucket = request.params["bucket_name"]
        try:
            dest = objects._copy(
                request.base_url,
                storage,
                bucket,
                request.params["object_id"],
                bucket,
                request.params["dest_object_id"],
            )
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            return
        objects._delete(storage, bucket, request.params["object_id"])
        response.json(dest)

    p = re.escape(settings.API_ENDPOINT)
    route = (
        rf"^{p}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
        rf"(?P<dest_object_id>.*[^/]+)$",
        {server.POST: move},
    )

    def current_generation(storage, bucket, name):
        try:
            return int(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return 0  # GCS convention: generation 0 == "does not exist"

    def query_int(request, key):
        v = request.query.get(key)
        return int(v[0]) if v else None

    def precondition(request, response, storage, name, *, is_read):
        """Returns False (and sets the response) if a precondition fails."""
        match = query_int(request, "ifGenerationMatch")
        not_match = query_int(request, "ifGenerationNotMatch")
        if match is None and not_match is None:
            return True
        gen = current_generation(storage, request.params["bucket_name"], name)
        if match is not None and gen != match:
            if not is_read:
                _ = request.data  # drain the body
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "Precondition Failed"}})
            return False
        if not_match is not None and gen == not_match and gen != 0:
            if is_read:
                response.status = HTTPStatus.NOT_MODIFIED
            else:
                _ = request.data  # drain the body
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
            return False
        return True

    def add_generation_headers(request, response, storage):
        if response.status not in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            return
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except NotFound:
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        response["x-goog-stored-content-length"] = str(obj["size"])

    orig_get, orig_download = objects.get, objects.download
    orig_insert, orig_delete = objects.insert, objects.delete

    def get(request, response, storage, *args, **kwargs):
        if request.query.get("softDeleted"):
            return orig_get(request, response, storage, *args, **kwargs)
        if not precondition(request, response, storage, request.params["object_id"], is_read=True):
            return
        orig_get(request, response, storage, *args, **kwargs)
        alt = request.query.get("alt")
        if alt and alt[0] == "media":
            add_generation_headers(request, response, storage)

    def download(request, response, storage, *args, **kwargs):
        if not precondition(request, response, storage, request.params["object_id"], is_read=True):
            return
        orig_download(request, response, storage, *args, **kwargs)
        add_generation_headers(request, response, storage)

    def insert(request, response, storage, *args, **kwargs):
        name = None
        if request.query.get("name"):
            name = request.query["name"][0]
        elif request.query.get("uploadType", [""])[0] == "multipart" and isinstance(
            request.data, dict
        ):
            name = request.data.get("meta", {}).get("name")
        if name is not None and not precondition(request, response, storage, name, is_read=False):
            return
        return orig_insert(request, response, storage, *args, **kwargs)

    def delete(request, response, storage, *args, **kwargs):
        if not precondition(request, response, storage, request.params["object_id"], is_read=False):
            return
        return orig_delete(request, response, storage, *args, **kwargs)

    replace = {orig_get: get, orig_download: download, orig_insert: insert, orig_delete: delete}
    handlers = [
        (regex, {m: replace.get(fn, fn) for m, fn in methods.items()})
        for regex, methods in server.HANDLERS
    ]
    # The router falls back to objects.insert for POST .../o?uploadType=...
    objects.insert = insert
    server.HANDLERS = (route,) + tuple(handlers)
    server._proto_patched = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port")
    parser.add_argument("--bucket", default=None)
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes, i.e. when the parent dies (even by SIGKILL)",
    )
    args = parser.parse_args()
    if args.exit_on_stdin_eof:

        def _watch_stdin():
            sys.stdin.read()
            os._exit(0)

        threading.Thread(target=_watch_stdin, daemon=True).start()
    logging.basicConfig(level=logging.WARNING)
    patch_emulator()
    from gcp_storage_emulator.server import create_server

    srv = create_server(args.host, args.port, in_memory=True, default_bucket=args.bucket)
    srv.start()
    port = srv._api._httpd.server_address[1]
    print(f"READY {port}", flush=True)  # the parent reads the real port here
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
