#!/usr/bin/env bash
# Submits training (launch/slurm_train.sbatch) or dataset generation (launch/slurm_generate.sbatch)
# to a SLURM cluster. Run `launch/slurm.sh --help` for the usage; docs/launch.md has examples.
set -euo pipefail

PROG="launch/slurm.sh"
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$LAUNCH_DIR")"
MARKER="# launch/slurm.sh inserts the values it was given below this line."

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh train|generate [options] [-- MAIN_FLAGS...]

Renders launch/slurm_train.sbatch or launch/slurm_generate.sbatch with the values below written
into it and submits it (`sbatch [SBATCH_OPTIONS] < rendered script`). Run it on the cluster's login
node, from a checkout on a filesystem the compute nodes share.

  train     multi-node training: one process per GPU via srun, --distributed
  generate  dataset generation: a job array of --workers independent workers, --mode=generate

Options for both:
  --partition=P        required (or $SBATCH_PARTITION): the SLURM partition
  --workdir=DIR        required (or $DJ_WORKDIR): the run directory (shared filesystem or gs://)
  --config=CONFIG      the config (default configs/faces.py:large for train, configs/faces.py for
                       generate)
  --account=A          the SLURM account (or $SBATCH_ACCOUNT; optional)
  --time=T             the time limit, e.g. 24:00:00 (default: the script's)
  --venv=DIR           a virtualenv to activate on the nodes (default: $VIRTUAL_ENV, if any)
  --python=PYTHON      the interpreter on the nodes (default python)
  --repo=DIR           the repository on the shared filesystem (default: this checkout)
  --sbatch-arg=ARG     one more sbatch option, e.g. --sbatch-arg=--qos=high (repeatable)
  --dry-run            print the sbatch command and the rendered script; submit nothing
  -h, --help           this text
Options for train:
  --nodes=N            nodes (default 1)
  --gpus-per-node=G    GPUs per node, one process each (default 8)
  --mode=MODE          the main job's --mode (default train)
Options for generate:
  --workers=W          required: the number of workers (array tasks 0..W-1)
  --parallel=P         at most P workers at once (default: all)
  --gpus-per-worker=G  GPUs per worker (default 1)
  --output-dir=DIR     the dataset directory (default: WORKDIR/generated)

Everything after -- goes to `python -m diffusion_jax.main`.
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# --------------------------------------------------------------------------- options
[ $# -gt 0 ] || die "missing the job kind: train or generate"
case "$1" in
  train | generate) kind="$1"; shift ;;
  -h | --help) usage; exit 0 ;;
  *) die "the first argument must be train or generate, not '$1'" ;;
esac

partition="${SBATCH_PARTITION:-}"
workdir="${DJ_WORKDIR:-}"
config=""
account="${SBATCH_ACCOUNT:-}"
time_limit=""
venv="${VIRTUAL_ENV:-}"
python=""
repo="$REPO_DIR"
nodes=1
gpus_per_node=8
mode=train
workers=""
parallel=""
gpus_per_worker=1
output_dir=""
dry_run=0
sbatch_args=()
main_flags=()

while [ $# -gt 0 ]; do
  option="$1"
  value=""
  has_value=0
  case "$option" in
    --*=*) value="${option#*=}"; option="${option%%=*}"; has_value=1 ;;
  esac
  case "$option" in
    --partition | --workdir | --config | --account | --time | --venv | --python | --repo | \
      --sbatch-arg | --nodes | --gpus-per-node | --mode | --workers | --parallel | \
      --gpus-per-worker | --output-dir)
      if [ "$has_value" = 0 ]; then
        [ $# -ge 2 ] || die "$option needs a value"
        value="$2"
        shift
      fi
      case "$option" in
        --partition) partition="$value" ;;
        --workdir) workdir="$value" ;;
        --config) config="$value" ;;
        --account) account="$value" ;;
        --time) time_limit="$value" ;;
        --venv) venv="$value" ;;
        --python) python="$value" ;;
        --repo) repo="$value" ;;
        --sbatch-arg) sbatch_args+=("$value") ;;
        --nodes | --gpus-per-node | --mode)
          [ "$kind" = train ] || die "$option applies to train only"
          case "$option" in
            --nodes) nodes="$value" ;;
            --gpus-per-node) gpus_per_node="$value" ;;
            --mode) mode="$value" ;;
          esac
          ;;
        --workers | --parallel | --gpus-per-worker | --output-dir)
          [ "$kind" = generate ] || die "$option applies to generate only"
          case "$option" in
            --workers) workers="$value" ;;
            --parallel) parallel="$value" ;;
            --gpus-per-worker) gpus_per_worker="$value" ;;
            --output-dir) output_dir="$value" ;;
          esac
          ;;
      esac
      ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; main_flags=("$@"); break ;;
    *) die "unknown option $option (flags for the main job go after --)" ;;
  esac
  shift
done

[ -n "$partition" ] || die "missing --partition (or \$SBATCH_PARTITION): the SLURM partition to run on, e.g. --partition=my-partition"
[ -n "$workdir" ] || die "missing --workdir (or \$DJ_WORKDIR): the run directory, on a filesystem all nodes share or gs://, e.g. --workdir=/shared/runs/large"
[ -d "$repo" ] || die "--repo: no such directory: $repo"
if [ "$kind" = train ]; then
  is_count "$nodes" || die "--nodes must be a positive integer, not '$nodes'"
  is_count "$gpus_per_node" || die "--gpus-per-node must be a positive integer, not '$gpus_per_node'"
  template="$LAUNCH_DIR/slurm_train.sbatch"
else
  [ -n "$workers" ] || die "missing --workers: the number of generation workers (array tasks), e.g. --workers=8"
  is_count "$workers" || die "--workers must be a positive integer, not '$workers'"
  [ -z "$parallel" ] || is_count "$parallel" || die "--parallel must be a positive integer, not '$parallel'"
  is_count "$gpus_per_worker" || die "--gpus-per-worker must be a positive integer, not '$gpus_per_worker'"
  template="$LAUNCH_DIR/slurm_generate.sbatch"
fi

# --------------------------------------------------------------------------- sbatch command
sbatch_command=(sbatch --parsable "--partition=$partition")
[ -z "$account" ] || sbatch_command+=("--account=$account")
[ -z "$time_limit" ] || sbatch_command+=("--time=$time_limit")
if [ "$kind" = train ]; then
  sbatch_command+=("--nodes=$nodes" "--ntasks-per-node=$gpus_per_node" "--gpus-per-node=$gpus_per_node")
else
  sbatch_command+=("--array=0-$((workers - 1))${parallel:+%$parallel}" "--gpus=$gpus_per_worker")
fi
sbatch_command+=(${sbatch_args[@]+"${sbatch_args[@]}"})

# --------------------------------------------------------------------------- rendered script
assignment() { printf 'export %s=%q\n' "$1" "$2"; }
values="$(
  assignment DJ_WORKDIR "$workdir"
  assignment DJ_REPO "$(cd "$repo" && pwd)"
  [ -z "$config" ] || assignment DJ_CONFIG "$config"
  [ "$kind" != train ] || assignment DJ_MODE "$mode"
  [ -z "$output_dir" ] || assignment DJ_OUTPUT_DIR "$output_dir"
  [ -z "$venv" ] || assignment DJ_VENV "$venv"
  [ -z "$python" ] || assignment DJ_PYTHON "$python"
  if [ ${#main_flags[@]} -gt 0 ]; then
    printf 'set -- %s"$@"\n' "$(printf '%q ' "${main_flags[@]}")"
  fi
)"

grep -qxF "$MARKER" "$template" || die "$template lacks the line '$MARKER'"
render() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    printf '%s\n' "$line"
    if [ "$line" = "$MARKER" ]; then printf '%s\n' "$values"; fi
  done < "$template"
}

if [ "$dry_run" = 1 ]; then
  echo "# sbatch command (the rendered script below is its standard input):"
  printf '%q ' "${sbatch_command[@]}"
  printf "<<'SBATCH_SCRIPT'\n"
  render
  echo "SBATCH_SCRIPT"
  exit 0
fi

command -v sbatch > /dev/null || die "sbatch is not on PATH: run this on the cluster's login node"
job_id="$(render | "${sbatch_command[@]}")"
echo "$PROG: submitted $kind job ${job_id} (rendered from ${template#"$REPO_DIR"/})"
if [ "$kind" = train ]; then
  echo "  log: diffusion_jax-train-${job_id%%;*}.out; resubmit the same command to resume"
else
  echo "  logs: diffusion_jax-generate-${job_id%%;*}_<task>.out; resubmit the same command to finish missing shards"
fi
