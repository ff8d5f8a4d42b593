#!/usr/bin/env bash
# The `base` preset's default command, run end to end (every pipeline stage to the report) on a
# CPU, with only step counts and dataset sizes made small (plus three batch sizes, see below);
# the architectures stay `base`'s (93M-parameter ADM UNet at 64x64, IResNet-50 at 112x112, pixel
# space). Times each pipeline stage (from the "Pipeline stage X: running." log lines) and the
# whole command, and writes a benchmark JSON record (diffusion_jax/benchmark_record.py).
#
#   benchmarks/base_smoke.sh [--workdir=DIR] [--data_dir=DIR] [--output=FILE] [--dry-run] [--quick]
#
#   --workdir   the run's directory (default /tmp/diffusion_jax_base_smoke/run); it is deleted
#               first, so every stage runs (a kept workdir would skip completed stages)
#   --data_dir  where the procedural dataset is prepared (default /tmp/diffusion_jax_base_smoke/tfds)
#   --output    the JSON record (default benchmarks/results/base_smoke_cpu2.json; "" prints only;
#               with --quick the default is "")
#   --dry-run   print the command and exit
#   --quick     a check that it runs: the same command and stage timing with base's
#               architectures shrunk to tiny sizes too (benchmarks/presets.py shrink_for_quick,
#               as --config. flags instead of the overrides below); default workdir and data_dir
#               under /tmp/diffusion_jax_base_smoke_quick
#
# Run from the repository root with the package installed (e.g. the .venv activated).
set -euo pipefail

WORKDIR=/tmp/diffusion_jax_base_smoke/run
DATA_DIR=/tmp/diffusion_jax_base_smoke/tfds
OUTPUT=benchmarks/results/base_smoke_cpu2.json
DRY_RUN=0
QUICK=0
for arg in "$@"; do
  if [[ "$arg" == --quick ]]; then
    QUICK=1
    WORKDIR=/tmp/diffusion_jax_base_smoke_quick/run
    DATA_DIR=/tmp/diffusion_jax_base_smoke_quick/tfds
    OUTPUT=""
  fi
done
for arg in "$@"; do
  case "$arg" in
    --workdir=*) WORKDIR="${arg#*=}" ;;
    --data_dir=*) DATA_DIR="${arg#*=}" ;;
    --output=*) OUTPUT="${arg#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    --quick) ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "Unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

# Step counts: 2 optimiser steps per trained network, logs/checkpoints at that step, figures at
# the end only, 5 sampler steps (base's 50 at guidance 2 cost ~23 s per 64x64 image on 2 cores).
STEPS=(
  --config.encoder.train.num_steps=2
  --config.encoder.train.log_every_steps=2
  --config.encoder.train.checkpoint_every_steps=2
  --config.recognizer.num_steps=2
  --config.train.num_steps=2
  --config.train.log_every_steps=2
  --config.train.checkpoint_every_steps=2
  --config.train.figures_every_steps=0
  --config.sample.num_steps=5
)
# Dataset sizes: 50 training identities (evaluate.consistency_identities' default) x 2 images;
# 20 held-out identities (the minimum: 2 per verification fold) x 2 images, 1 pair per fold;
# 2 x 2 figure samples; 2 generated identities x 2 images in one shard.
SIZES=(
  --config.data.data_dir="$DATA_DIR"
  --config.data.num_train_identities=50
  --config.data.images_per_train_identity=2
  --config.data.num_heldout_identities=20
  --config.data.images_per_heldout_identity=2
  --config.data.pairs_per_fold=1
  --config.sample.identities="(0, 1)"
  --config.sample.samples_per_identity=2
  --config.generate.num_identities=2
  --config.generate.images_per_identity=2
  --config.generate.identities_per_shard=2
)
# Batch sizes, the minimum needed to finish on 2 CPU cores: at base's batches one step of the
# UNet (128 images) or of IResNet-50 (256) takes ~2 minutes, and the embedding and sampler batches
# are padded to full size (256 and 64 images for a handful of real ones).
BATCHES=(
  --config.train.batch_size=8
  --config.encoder.train.batch_size=8
  --config.evaluate.batch_size=8
  --config.generate.batch_size=4
)
CMD=(python -m diffusion_jax.main --config=configs/faces.py --workdir="$WORKDIR"
     "${STEPS[@]}" "${SIZES[@]}" "${BATCHES[@]}")
if [[ "$QUICK" == 1 ]]; then
  mapfile -t TINY < <(python -c 'import sys; sys.path.insert(0, sys.argv[1]); import presets
print("\n".join(presets.quick_overrides("base")))' "$(dirname "$0")")
  if [[ ${#TINY[@]} == 0 ]]; then echo "--quick: no overrides from benchmarks/presets.py" >&2; exit 1; fi
  CMD=(python -m diffusion_jax.main --config=configs/faces.py --workdir="$WORKDIR"
       --config.data.data_dir="$DATA_DIR" "${TINY[@]}")
fi

if [[ "$DRY_RUN" == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR" "$DATA_DIR"
LOG="$WORKDIR/../base_smoke.log"

# Runs the command, copies its output to the terminal and $LOG, times the stages, writes the record.
python - "$OUTPUT" "$LOG" "$WORKDIR" "$0" "$@" -- "${CMD[@]}" <<'EOF'
import json, pathlib, re, subprocess, sys, time

from diffusion_jax.benchmark_record import write_benchmark_json

args = sys.argv[1:]
split = args.index("--")
(output, log_path, workdir, *script_argv), cmd = args[:split], args[split + 1 :]
stage_line = re.compile(r"Pipeline stage (\w+): (running|complete, skipped|not needed)")
start = time.monotonic()
marks = [("setup", start)]  # (stage, when it started); "setup": imports, checks, data preparation
skipped = []
with open(log_path, "w") as log:
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        sys.stdout.write(line)
        log.write(line)
        log.flush()
        match = stage_line.search(line)
        if match and match.group(2) == "running":
            marks.append((match.group(1), time.monotonic()))
        elif match:
            skipped.append(match.group(1))
    returncode = process.wait()
end = time.monotonic()
stage_seconds = {
    name: round((marks[i + 1][1] if i + 1 < len(marks) else end) - when, 1)
    for i, (name, when) in enumerate(marks)
}
report = pathlib.Path(workdir) / "report" / "report.json"
results = {
    "returncode": returncode,
    "report_written": report.exists(),
    "stages_run": [name for name, _ in marks[1:]],
    "stages_skipped": skipped,
    "stage_seconds": stage_seconds,
    "total_seconds": round(end - start, 1),
}
settings = {
    "preset": "base (quick: shrunk)" if "--quick" in script_argv else "base",
    "quick": "--quick" in script_argv,
    "workdir": workdir,
    "overrides": [a for a in cmd if a.startswith("--config.")],
}
write_benchmark_json(output, "base_smoke", results, settings, argv=script_argv)
sys.exit(0 if returncode == 0 and report.exists() else 1)
EOF
