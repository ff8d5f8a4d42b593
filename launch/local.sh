#!/usr/bin/env bash
# Starts N processes of the main job on this machine exactly as a SLURM step starts its tasks.
# Run `launch/local.sh --help` for the usage; docs/launch.md has worked examples.
set -euo pipefail

PROG="launch/local.sh"

usage() {
  cat <<'EOF'
Usage: launch/local.sh [options] N [-- MAIN_FLAGS...]

Starts N processes on this machine the way `srun` starts the tasks of a SLURM step. Process i gets
the variables srun sets (SLURM_JOB_ID, SLURM_NTASKS=N, SLURM_PROCID=i, SLURM_LOCALID=i,
SLURM_STEP_NODELIST=localhost, SLURM_STEP_NUM_NODES=1, ...), so `jax.distributed.initialize()`
without arguments finds coordinator localhost:PORT, N processes and process id i. Each process runs
on the CPU with K devices (JAX_PLATFORMS=cpu,
XLA_FLAGS=--xla_force_host_platform_device_count=K) and runs

    python -m diffusion_jax.main --distributed MAIN_FLAGS...

Options:
  --devices-per-process=K  CPU devices per process (default 2)
  --port=PORT              coordinator port (default: $JAX_COORDINATOR_PORT, else a free port in
                           61440-65535, the range JAX derives from SLURM_JOB_ID)
  --log-dir=DIR            where process i writes DIR/process_<i>.log
                           (default: ${TMPDIR:-/tmp}/diffusion_jax_local/job_<SLURM_JOB_ID>)
  --python=PYTHON          the interpreter (default: $PYTHON, else python)
  --module=MODULE          run `python -m MODULE MAIN_FLAGS...` instead of the main job
                           (no --distributed is added)
  --script=FILE            run `python FILE MAIN_FLAGS...` instead of the main job, e.g. a check
                           of jax.distributed (no --distributed is added)
  --dry-run                print each process's environment and command; run nothing
  -h, --help               this text

Exit status: 0 when every process exits 0. When one process fails, the others are sent SIGTERM
and the status is that of the first failure. SIGTERM and SIGINT sent to this script are
forwarded to every process as SIGTERM (the main job saves a checkpoint and stops cleanly).

Example:
  launch/local.sh 2 -- --config=configs/faces.py:demo --workdir=/tmp/run --mode=train
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# --------------------------------------------------------------------------- options
devices_per_process=2
port="${JAX_COORDINATOR_PORT:-}"
log_dir=""
python="${PYTHON:-python}"
module=""
script=""
dry_run=0
num_processes=""
main_flags=()

while [ $# -gt 0 ]; do
  option="$1"
  value=""
  has_value=0
  case "$option" in
    --*=*) value="${option#*=}"; option="${option%%=*}"; has_value=1 ;;
  esac
  case "$option" in
    --devices-per-process | --port | --log-dir | --python | --module | --script)
      if [ "$has_value" = 0 ]; then
        [ $# -ge 2 ] || die "$option needs a value"
        value="$2"
        shift
      fi
      case "$option" in
        --devices-per-process) devices_per_process="$value" ;;
        --port) port="$value" ;;
        --log-dir) log_dir="$value" ;;
        --python) python="$value" ;;
        --module) module="$value" ;;
        --script) script="$value" ;;
      esac
      ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; main_flags=("$@"); break ;;
    -*) die "unknown option $option (flags for the main job go after --)" ;;
    *)
      [ -z "$num_processes" ] || die "unexpected argument $option (flags for the main job go after --)"
      num_processes="$option"
      ;;
  esac
  shift
done

[ -n "$num_processes" ] || die "missing N, the number of processes (e.g. $PROG 2 -- --config=...)"
is_count "$num_processes" || die "N must be a positive integer, not '$num_processes'"
is_count "$devices_per_process" || die "--devices-per-process must be a positive integer, not '$devices_per_process'"
[ -z "$module" ] || [ -z "$script" ] || die "give --module or --script, not both"
[ -z "$script" ] || [ -f "$script" ] || die "--script: no such file: $script"

# --------------------------------------------------------------------------- coordinator port
# JAX's SLURM detection (jax/_src/clusters/slurm_cluster.py) takes the coordinator host from the
# first name of SLURM_STEP_NODELIST and the port from JAX_COORDINATOR_PORT, else
# SLURM_JOB_ID % 4096 + 61440. Both are set here so they agree on one port.
find_free_port='
import random
import socket

for candidate in random.sample(range(61440, 65536), 4096):
    with socket.socket() as probe:
        try:
            probe.bind(("localhost", candidate))
        except OSError:
            continue
        print(candidate)
        break
'
if [ -z "$port" ]; then
  port="$("$python" -c "$find_free_port")" ||
    die "could not run $python to find a free port (give --python or --port)"
  [ -n "$port" ] || die "no free port in 61440-65535; give --port"
fi
is_count "$port" && [ "$port" -le 65535 ] || die "--port must be a port number, not '$port'"
if [ "$port" -ge 61440 ]; then
  job_id=$((port - 61440 + 4096))  # SLURM_JOB_ID % 4096 + 61440 == port
else
  job_id=$$  # the port comes from JAX_COORDINATOR_PORT alone
fi

[ -n "$log_dir" ] || log_dir="${TMPDIR:-/tmp}/diffusion_jax_local/job_${job_id}"

# --------------------------------------------------------------------------- the processes
if [ -n "$module" ]; then
  command=("$python" -m "$module")
elif [ -n "$script" ]; then
  command=("$python" "$script")
else
  command=("$python" -m diffusion_jax.main --distributed)
fi
command+=(${main_flags[@]+"${main_flags[@]}"})

# Variables of a SLURM job this shell may run inside: the children get only ours.
inherited_unset=()
for name in $(compgen -e); do
  case "$name" in SLURM_* | SLURMD_*) inherited_unset+=(-u "$name") ;; esac
done

xla_flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=${devices_per_process}"

process_environment() {  # the variables of process $1, as NAME=VALUE words
  local i="$1"
  printf '%s\n' \
    "SLURM_JOB_ID=${job_id}" "SLURM_JOBID=${job_id}" "SLURM_JOB_NAME=diffusion_jax_local" \
    "SLURM_NTASKS=${num_processes}" "SLURM_NPROCS=${num_processes}" \
    "SLURM_STEP_NUM_TASKS=${num_processes}" "SLURM_TASKS_PER_NODE=${num_processes}" \
    "SLURM_PROCID=${i}" "SLURM_LOCALID=${i}" "SLURM_NODEID=0" "SLURM_STEP_ID=0" \
    "SLURM_NNODES=1" "SLURM_JOB_NUM_NODES=1" "SLURM_STEP_NUM_NODES=1" \
    "SLURM_NODELIST=localhost" "SLURM_JOB_NODELIST=localhost" "SLURM_STEP_NODELIST=localhost" \
    "SLURMD_NODENAME=localhost" \
    "JAX_COORDINATOR_PORT=${port}" "JAX_PLATFORMS=cpu" "XLA_FLAGS=${xla_flags}"
}

quoted() { printf '%q ' "$@"; }

echo "$PROG: ${num_processes} processes x ${devices_per_process} CPU devices," \
  "coordinator localhost:${port}, logs in ${log_dir}" >&2

if [ "$dry_run" = 1 ]; then
  for ((i = 0; i < num_processes; i++)); do
    environment=()
    while IFS= read -r assignment; do environment+=("$assignment"); done < <(process_environment "$i")
    echo "# process $i of $num_processes (log: ${log_dir}/process_${i}.log)"
    echo "env ${inherited_unset[*]+${inherited_unset[*]} }$(quoted "${environment[@]}")\\"
    echo "  $(quoted "${command[@]}")> $(printf '%q' "${log_dir}/process_${i}.log") 2>&1 &"
  done
  echo "wait"
  exit 0
fi

mkdir -p "$log_dir"
pids=()
statuses=()
forward() {  # sends SIGTERM to every process still running
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
stop_requested=0
# shellcheck disable=SC2329  # called by the traps below
on_signal() {
  echo "$PROG: $1 received, sending SIGTERM to the processes" >&2
  stop_requested=1
  forward
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
trap 'on_signal SIGHUP' HUP

for ((i = 0; i < num_processes; i++)); do
  environment=()
  while IFS= read -r assignment; do environment+=("$assignment"); done < <(process_environment "$i")
  env ${inherited_unset[@]+"${inherited_unset[@]}"} "${environment[@]}" "${command[@]}" \
    > "${log_dir}/process_${i}.log" 2>&1 < /dev/null &
  pids+=("$!")
  statuses+=("")
done

# Poll rather than `wait -n`: the bash of macOS (3.2) has no `wait -n`.
first_failure=0
running=$num_processes
while [ "$running" -gt 0 ]; do
  running=0
  for ((i = 0; i < num_processes; i++)); do
    [ -z "${statuses[$i]}" ] || continue
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      running=$((running + 1))
      continue
    fi
    status=0
    wait "${pids[$i]}" || status=$?
    statuses[i]=$status
    if [ "$status" != 0 ] && [ "$first_failure" = 0 ]; then
      first_failure=$status
      echo "$PROG: process $i exited with status $status; stopping the others" >&2
      forward
    fi
  done
  [ "$running" = 0 ] || sleep 0.2
done

for ((i = 0; i < num_processes; i++)); do
  echo "$PROG: process $i exited with status ${statuses[$i]} (log: ${log_dir}/process_${i}.log)" >&2
  if [ "${statuses[$i]}" != 0 ]; then
    tail -n 20 "${log_dir}/process_${i}.log" | sed "s/^/  process $i | /" >&2
  fi
done
if [ "$stop_requested" = 1 ] && [ "$first_failure" = 0 ]; then
  echo "$PROG: stopped on request; every process exited cleanly" >&2
fi
exit "$first_failure"
