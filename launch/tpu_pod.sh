#!/usr/bin/env bash
# Runs the main job on a Cloud TPU pod slice from a laptop or any machine with gcloud.
# Run `launch/tpu_pod.sh --help` for the usage; docs/launch.md has worked examples.
set -euo pipefail

PROG="launch/tpu_pod.sh"
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$LAUNCH_DIR")"

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [STEP] [options] [-- MAIN_FLAGS...]

Runs `python -m diffusion_jax.main --distributed` on every worker of a TPU pod slice, with a gs://
workdir. The script is idempotent: it reuses a slice that is READY, recreates one that was
preempted, and the rerun of a stopped or preempted job resumes from the checkpoints in the
workdir. So after a preemption, run the same command again.

STEP (default all):
  all      up, install, run, logs
  up       create the slice, or reuse it if it is READY (recreate it if PREEMPTED)
  install  copy this checkout (or clone --repo-url) to every worker, pip install -e ".[tpu]"
  run      start the main job on every worker (ssh --worker=all); each worker logs to
           ~/diffusion_jax_run.log and copies it to WORKDIR/logs/<hostname>.log
  logs     copy every worker's current log to WORKDIR/logs/, then to --log-dir here
  delete   delete the slice (and its queued resource with --spot)

Options:
  --project=P            required (or $CLOUDSDK_CORE_PROJECT): the Google Cloud project
  --zone=Z               required (or $CLOUDSDK_COMPUTE_ZONE): the TPU zone, e.g. us-central2-b
  --workdir=gs://B/DIR   required for run, logs, all (or $DJ_WORKDIR): the run directory
  --name=NAME            the slice's name (default diffusion-jax)
  --accelerator-type=T   the slice type (default v5litepod-16)
  --runtime-version=V    the TPU VM software version (default v2-alpha-tpuv5-lite; it must
                         match the type, e.g. tpu-ubuntu2204-base for v4, v2-alpha-tpuv6e for v6e)
  --spot                 create the slice as a Spot queued resource (waits for capacity; can be
                         preempted; rerun this script to resume)
  --wait-minutes=M       with --spot: how long to wait for the queued resource (default 120)
  --service-account=SA   the workers' service account (default: the project's default); it needs
                         write access to the workdir's bucket
  --config=CONFIG        the config (default configs/faces.py:large)
  --mode=MODE            the main job's --mode (default train)
  --repo-url=URL         clone this git URL on the workers instead of copying this checkout
  --ref=REF              with --repo-url: the commit, branch or tag (default: the remote's HEAD)
  --python=PYTHON        the interpreter on the workers (default python3.11; installed with apt
                         when missing, since the project needs Python >= 3.11)
  --detach               run: start the job in the background on the workers and return
  --log-dir=DIR          logs: where to copy the logs here (default tpu_logs/NAME)
  --dry-run              print the commands (and the workers' run script); run nothing
  -h, --help             this text

Everything after -- goes to `python -m diffusion_jax.main`.
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# --------------------------------------------------------------------------- options
step=all
case "${1:-}" in
  all | up | install | run | logs | delete) step="$1"; shift ;;
esac

project="${CLOUDSDK_CORE_PROJECT:-}"
zone="${CLOUDSDK_COMPUTE_ZONE:-}"
workdir="${DJ_WORKDIR:-}"
name=diffusion-jax
accelerator_type=v5litepod-16
runtime_version=v2-alpha-tpuv5-lite
spot=0
wait_minutes=120
service_account=""
config="configs/faces.py:large"
mode=train
repo_url=""
ref=""
python=python3.11
detach=0
log_dir=""
dry_run=0
main_flags=()

while [ $# -gt 0 ]; do
  option="$1"
  value=""
  has_value=0
  case "$option" in
    --*=*) value="${option#*=}"; option="${option%%=*}"; has_value=1 ;;
  esac
  case "$option" in
    --project | --zone | --workdir | --name | --accelerator-type | --runtime-version | \
      --wait-minutes | --service-account | --config | --mode | --repo-url | --ref | --python | \
      --log-dir)
      if [ "$has_value" = 0 ]; then
        [ $# -ge 2 ] || die "$option needs a value"
        value="$2"
        shift
      fi
      case "$option" in
        --project) project="$value" ;;
        --zone) zone="$value" ;;
        --workdir) workdir="$value" ;;
        --name) name="$value" ;;
        --accelerator-type) accelerator_type="$value" ;;
        --runtime-version) runtime_version="$value" ;;
        --wait-minutes) wait_minutes="$value" ;;
        --service-account) service_account="$value" ;;
        --config) config="$value" ;;
        --mode) mode="$value" ;;
        --repo-url) repo_url="$value" ;;
        --ref) ref="$value" ;;
        --python) python="$value" ;;
        --log-dir) log_dir="$value" ;;
      esac
      ;;
    --spot) spot=1 ;;
    --detach) detach=1 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; main_flags=("$@"); break ;;
    *) die "unknown option or step $option (steps: all up install run logs delete; flags for the main job go after --)" ;;
  esac
  shift
done

[ -n "$project" ] || die "missing --project (or \$CLOUDSDK_CORE_PROJECT): the Google Cloud project, e.g. --project=my-project"
[ -n "$zone" ] || die "missing --zone (or \$CLOUDSDK_COMPUTE_ZONE): the TPU zone, e.g. --zone=us-central2-b"
case "$step" in
  all | run | logs)
    [ -n "$workdir" ] || die "missing --workdir (or \$DJ_WORKDIR): the run directory on Cloud Storage, e.g. --workdir=gs://my-bucket/runs/large"
    case "$workdir" in
      gs://?*) workdir="${workdir%/}" ;;
      *) die "--workdir must be a gs:// URL (every worker reads and writes it; checkpoints there survive a preemption), not '$workdir'" ;;
    esac
    ;;
esac
is_count "$wait_minutes" || die "--wait-minutes must be a positive integer, not '$wait_minutes'"
[ -n "$log_dir" ] || log_dir="tpu_logs/$name"
[ -z "$ref" ] || [ -n "$repo_url" ] || die "--ref needs --repo-url"

# --------------------------------------------------------------------------- helpers
where=(--zone="$zone" --project="$project")
tpu=(gcloud compute tpus tpu-vm)
queued=(gcloud compute tpus queued-resources)

show() { printf '+ '; printf '%q ' "$@"; printf '\n'; }
run() {  # prints the command; runs it unless --dry-run
  show "$@"
  [ "$dry_run" = 1 ] || "$@"
}
need_gcloud() {
  [ "$dry_run" = 1 ] || command -v gcloud > /dev/null ||
    die "gcloud is not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk)"
}
ssh_all() { run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"; }

node_state() { "${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)' 2> /dev/null || true; }
queued_state() { "${queued[@]}" describe "$name" "${where[@]}" --format='value(state.state)' 2> /dev/null || true; }

create_slice() {
  local scopes=(--scopes=https://www.googleapis.com/auth/cloud-platform)
  local account=()
  [ -z "$service_account" ] || account=(--service-account="$service_account")
  if [ "$spot" = 1 ]; then
    run "${queued[@]}" create "$name" "${where[@]}" --node-id="$name" \
      --accelerator-type="$accelerator_type" --runtime-version="$runtime_version" --spot \
      "${scopes[@]}" ${account[@]+"${account[@]}"}
  else
    run "${tpu[@]}" create "$name" "${where[@]}" \
      --accelerator-type="$accelerator_type" --version="$runtime_version" \
      "${scopes[@]}" ${account[@]+"${account[@]}"}
  fi
}

delete_slice() {
  if [ "$spot" = 1 ]; then
    run "${queued[@]}" delete "$name" "${where[@]}" --force --quiet
  else
    run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  fi
}

wait_until_active() {  # a queued resource becomes ACTIVE once its slice is provisioned
  local deadline=$((SECONDS + wait_minutes * 60)) state
  while true; do
    state="$(queued_state)"
    case "$state" in
      ACTIVE) echo "$PROG: queued resource $name is ACTIVE"; return 0 ;;
      FAILED | SUSPENDED | SUSPENDING) die "queued resource $name is $state; rerun to recreate it, or '$PROG delete --spot ...'" ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || die "queued resource $name is still ${state:-absent} after $wait_minutes minutes; rerun to keep waiting"
    echo "$PROG: queued resource $name is ${state:-not visible yet}; waiting for capacity"
    sleep 30
  done
}

# --------------------------------------------------------------------------- steps
step_up() {
  need_gcloud
  if [ "$dry_run" = 1 ]; then
    echo "# up: reuse the slice if READY; create it if absent; delete and recreate it if PREEMPTED"
    show "${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)'
    create_slice
    [ "$spot" = 0 ] || echo "# then wait until '${queued[*]} describe $name' reports ACTIVE"
    return 0
  fi
  local state
  state="$(node_state)"
  echo "$PROG: slice $name: ${state:-absent}"
  case "$state" in
    READY) echo "$PROG: reusing slice $name" ;;
    "")
      if [ "$spot" = 1 ] && [ -n "$(queued_state)" ]; then
        case "$(queued_state)" in
          FAILED | SUSPENDED) delete_slice; create_slice ;;
        esac
      else
        create_slice
      fi
      [ "$spot" = 0 ] || wait_until_active
      ;;
    PREEMPTED | TERMINATED)
      echo "$PROG: slice $name was $state; recreating it (the workdir keeps the checkpoints)"
      delete_slice
      create_slice
      [ "$spot" = 0 ] || wait_until_active
      ;;
    STOPPED) run "${tpu[@]}" start "$name" "${where[@]}" ;;
    CREATING | STARTING | RESTARTING | REPAIRING)
      die "slice $name is $state; rerun in a few minutes"
      ;;
    *) die "slice $name is in state $state; inspect it with: gcloud compute tpus tpu-vm describe $name --zone=$zone --project=$project" ;;
  esac
}

step_install() {
  need_gcloud
  local setup_python fetch
  setup_python="command -v $(printf %q "$python") >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq $(printf %q "$python") $(printf %q "$python")-venv; }
[ -x ~/diffusion_jax_venv/bin/python ] || $(printf %q "$python") -m venv ~/diffusion_jax_venv
~/diffusion_jax_venv/bin/pip install -q --upgrade pip
cd ~/diffusion_jax && ~/diffusion_jax_venv/bin/pip install -q -e '.[tpu]'"
  if [ -n "$repo_url" ]; then
    fetch="set -e
if [ -d ~/diffusion_jax/.git ]; then git -C ~/diffusion_jax fetch -q origin; else rm -rf ~/diffusion_jax; git clone -q $(printf %q "$repo_url") ~/diffusion_jax; fi
git -C ~/diffusion_jax checkout -q --detach $(printf %q "${ref:-origin/HEAD}")"
    ssh_all "$fetch
$setup_python"
  else
    # This checkout without its virtualenvs, caches and git history.
    local archive
    archive="${TMPDIR:-/tmp}/diffusion_jax_src.$$.tar.gz"
    run tar -C "$REPO_DIR" --exclude=./.git --exclude=./.venv --exclude=./.venv-ci \
      --exclude=./.jax_cache --exclude=./tpu_logs --exclude='__pycache__' --exclude='*.egg-info' \
      -czf "$archive" .
    run "${tpu[@]}" scp "$archive" "$name:diffusion_jax_src.tar.gz" "${where[@]}" --worker=all
    [ "$dry_run" = 1 ] || rm -f "$archive"
    ssh_all "set -e
rm -rf ~/diffusion_jax && mkdir -p ~/diffusion_jax && tar -xzf ~/diffusion_jax_src.tar.gz -C ~/diffusion_jax
$setup_python"
  fi
}

run_script() {  # the script each worker runs: the main job, its log, and the log's copy
  local main_command
  # The interpreter's path expands on the worker ($HOME there), the rest is quoted here.
  main_command="\"\$HOME\"/diffusion_jax_venv/bin/python $(printf '%q ' -m diffusion_jax.main \
    "--config=$config" "--workdir=$workdir" "--mode=$mode" --distributed \
    ${main_flags[@]+"${main_flags[@]}"})"
  cat <<EOF
#!/bin/bash
# Written by launch/tpu_pod.sh: runs the main job on this TPU worker.
set -uo pipefail
cd ~/diffusion_jax
log=~/diffusion_jax_run.log
pid_file=~/diffusion_jax_run.pid
upload_log() {
  gcloud storage cp "\$log" $(printf %q "$workdir/logs")/"\$(hostname).log" > /dev/null 2>&1 ||
    gsutil -q cp "\$log" $(printf %q "$workdir/logs")/"\$(hostname).log" ||
    echo "could not copy \$log to $(printf %q "$workdir/logs")/"
}
# A previous run still holding the TPU (a rerun on a reused slice): stop it; it saves first.
if [ -f "\$pid_file" ] && kill -0 "\$(cat "\$pid_file")" 2> /dev/null; then
  kill -TERM "\$(cat "\$pid_file")"
  for _ in \$(seq 120); do kill -0 "\$(cat "\$pid_file")" 2> /dev/null || break; sleep 1; done
fi
$main_command> "\$log" 2>&1 < /dev/null &
pid=\$!
echo "\$pid" > "\$pid_file"
trap 'kill -TERM \$pid 2> /dev/null' TERM INT HUP
tail -n +1 -f --pid="\$pid" "\$log" &
# wait returns early (status > 128) when a trapped signal arrives; the job may still be saving.
while :; do
  wait "\$pid"
  status=\$?
  kill -0 "\$pid" 2> /dev/null || break
done
if [ "\$status" -gt 128 ]; then
  wait "\$pid" 2> /dev/null
  last=\$?
  [ "\$last" = 127 ] || status=\$last
fi
upload_log
echo "diffusion_jax on \$(hostname): exit status \$status"
exit "\$status"
EOF
}

step_run() {
  need_gcloud
  local script_file
  script_file="${TMPDIR:-/tmp}/diffusion_jax_run.$$.sh"
  if [ "$dry_run" = 1 ]; then
    echo "# the script each worker runs (~/diffusion_jax_run.sh):"
    run_script | sed 's/^/#   /'
  else
    run_script > "$script_file"
  fi
  run "${tpu[@]}" scp "$script_file" "$name:diffusion_jax_run.sh" "${where[@]}" --worker=all ||
    die "could not copy the run script to the workers of $name"
  [ "$dry_run" = 1 ] || rm -f "$script_file"
  if [ "$detach" = 1 ]; then
    ssh_all "setsid nohup bash ~/diffusion_jax_run.sh > /dev/null 2>&1 < /dev/null &"
    echo "$PROG: started on every worker; '$PROG logs ...' collects the logs"
  else
    ssh_all "bash ~/diffusion_jax_run.sh"
  fi
}

step_logs() {
  need_gcloud
  ssh_all "gcloud storage cp ~/diffusion_jax_run.log $(printf %q "$workdir/logs")/\$(hostname).log > /dev/null 2>&1 || gsutil -q cp ~/diffusion_jax_run.log $(printf %q "$workdir/logs")/\$(hostname).log"
  run mkdir -p "$log_dir"
  run gcloud storage cp "$workdir/logs/*" "$log_dir/" --project="$project"
  echo "$PROG: the workers' logs are in $log_dir/ (and $workdir/logs/)"
}

case "$step" in
  up) step_up ;;
  install) step_install ;;
  run) step_run ;;
  logs) step_logs ;;
  delete) need_gcloud; delete_slice ;;
  all)
    step_up
    step_install
    status=0
    step_run || status=$?
    if [ "$detach" = 0 ]; then step_logs || true; fi
    exit "$status"
    ;;
esac
