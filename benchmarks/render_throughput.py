"""Throughput of the procedural face renderer and of the grain training pipeline on ONE CPU core;
prints JSON.

The process pins itself to one core before JAX starts (`os.sched_setaffinity`, like
`taskset -c CORE`) and runs XLA single-threaded
(XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1).

    render    `procedural_faces.render` on batches of RENDER_BATCH_SIZE at each resolution:
              images/s over wall time and over the process's CPU time (the same unless another
              process shares the core), best of --repeats calls, and the compile time.
    prepare   building the `procedural_faces` TFDS dataset (render, PNG-encode, write
              ArrayRecord) at --pipeline-resolution, in images/s, unless --data-dir holds it.
    pipeline  `input_pipeline.make_train_iterator` (worker_count 0): read, PNG-decode, flip, scale
              and batch, in images/s.

The report is a `diffusion_jax.benchmark_record` (commit, machine, command line, settings,
results), printed and, with --output, written.

    python benchmarks/render_throughput.py
    python benchmarks/render_throughput.py --resolutions=64 --repeats=10 --core=1
    python benchmarks/render_throughput.py --quick --output=/tmp/render.json   # seconds

`--quick` is a check that it runs: 32x32 only, 1 timed render, the pipeline over 2 training
identities at 32x32 for 2 batches.
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time

from diffusion_jax.benchmark_record import write_benchmark_json


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--resolutions", default="32,64,112", help="comma-separated render resolutions"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed render calls per resolution")
    parser.add_argument(
        "--core", type=int, default=None, help="CPU core to pin to (default: the first allowed)"
    )
    parser.add_argument("--pipeline-resolution", type=int, default=64)
    parser.add_argument(
        "--pipeline-identities", type=int, default=100, help="training identities (x20 images)"
    )
    parser.add_argument(
        "--pipeline-batches", type=int, default=50, help="batches of 64 read from the pipeline"
    )
    parser.add_argument(
        "--data-dir", default=None, help="TFDS data dir to reuse (default: a temporary one)"
    )
    parser.add_argument("--output", default=None, help="also write the JSON report to this file")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a check that it runs, in seconds: 32x32, 1 repeat, 2 identities, 2 batches",
    )
    args = parser.parse_args()
    if args.quick:
        args.resolutions, args.repeats = "32", 1
        args.pipeline_resolution, args.pipeline_identities, args.pipeline_batches = 32, 2, 2
    return args


def _pin_to_one_core(core: int | None) -> int:
    core = min(os.sched_getaffinity(0)) if core is None else core
    os.sched_setaffinity(0, {core})
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    return core


def _timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def _render_throughput(resolution: int, repeats: int) -> dict:
    import numpy as np

    from diffusion_jax.tasks.data.faces import procedural_faces

    batch = procedural_faces.RENDER_BATCH_SIZE
    identity_ids = np.arange(batch)
    identity = procedural_faces.sample_identities(0, identity_ids)
    nuisance = procedural_faces.sample_nuisance(0, identity_ids, identity_ids)
    compile_s, _ = _timed(
        lambda: procedural_faces.render(identity, nuisance, resolution).block_until_ready()
    )
    timings = [
        _timed(lambda: procedural_faces.render(identity, nuisance, resolution).block_until_ready())
        for _ in range(repeats)
    ]
    return {
        "resolution": resolution,
        "batch": batch,
        "images_per_s": round(batch / min(wall for wall, _ in timings), 1),
        "images_per_cpu_s": round(batch / min(cpu for _, cpu in timings), 1),
        "first_call_s": round(compile_s, 2),
    }


def _pipeline_throughput(args: argparse.Namespace, data_dir: str) -> dict:
    import ml_collections

    from diffusion_jax.tasks.data.sources import input_pipeline

    data_config = ml_collections.ConfigDict(
        {
            "source": "procedural",
            "data_dir": data_dir,
            "resolution": args.pipeline_resolution,
            "seed": 0,
            "num_train_identities": args.pipeline_identities,
            "images_per_train_identity": 20,
            "num_heldout_identities": 20,
            "images_per_heldout_identity": 4,
            "pairs_per_fold": 2,
            "horizontal_flip": True,
            "worker_count": 0,
        }
    )
    with contextlib.redirect_stdout(sys.stderr):  # TFDS reports its progress on stdout.
        prepare_s, _ = _timed(lambda: input_pipeline.ensure_prepared(data_config))
    iterator = input_pipeline.make_train_iterator(data_config, global_batch_size=64, seed=0)
    next(iterator)
    read_s, read_cpu_s = _timed(lambda: [next(iterator) for _ in range(args.pipeline_batches)])
    images = 64 * args.pipeline_batches
    return {
        "resolution": args.pipeline_resolution,
        "train_images": 20 * args.pipeline_identities,
        "prepare_s": round(prepare_s, 2),
        "decoded_images_per_s": round(images / read_s, 1),
        "decoded_images_per_cpu_s": round(images / read_cpu_s, 1),
    }


def main() -> None:
    args = _parse_args()
    core = _pin_to_one_core(args.core)
    results = {
        "render": [_render_throughput(int(r), args.repeats) for r in args.resolutions.split(",")],
    }
    with tempfile.TemporaryDirectory() as temporary:
        results["pipeline"] = _pipeline_throughput(args, args.data_dir or temporary)
    settings = {
        "core": core,
        "xla_flags": os.environ["XLA_FLAGS"].strip(),
        "resolutions": [int(r) for r in args.resolutions.split(",")],
        "repeats": args.repeats,
        "pipeline_resolution": args.pipeline_resolution,
        "pipeline_identities": args.pipeline_identities,
        "pipeline_batches": args.pipeline_batches,
        "data_dir": args.data_dir,
        "quick": args.quick,
    }
    write_benchmark_json(args.output, "render_throughput", results, settings)


if __name__ == "__main__":
    main()
