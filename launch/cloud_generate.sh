#!/usr/bin/env bash
# Dataset generation on many cloud VMs: renders launch/cloud_batch_generate.json (Google Cloud Batch)
# or launch/k8s_generate_job.yaml (a Kubernetes Indexed Job) with your values and submits it.
# Run `launch/cloud_generate.sh --help` for the usage; docs/launch.md has worked examples.
set -euo pipefail
shopt -u patsub_replacement 2> /dev/null || true  # bash 5.2: '&' in a value stays '&'

PROG="launch/cloud_generate.sh"
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<'EOF'
Usage: launch/cloud_generate.sh batch|k8s [options] [-- MAIN_FLAGS...]

Runs `--mode=generate` of the project's container image (launch/Dockerfile; its entrypoint is
`python -m diffusion_jax.main`) as --workers independent workers, all writing to one dataset:

  batch  a Google Cloud Batch job (launch/cloud_batch_generate.json): taskCount = workers; Batch
         sets BATCH_TASK_INDEX / BATCH_TASK_COUNT in each task, the worker's index and count.
         Submitted with `gcloud batch jobs submit NAME --config=-`.
  k8s    a Kubernetes Indexed Job (launch/k8s_generate_job.yaml): completions = workers; pod i
         gets JOB_COMPLETION_INDEX=i, and the count is passed as --config.generate.task_count.
         Submitted with `kubectl apply -f -`.

The workers need the trained diffusion model and the judge in the workdir (docs/generation.md).
Rerunning after a preemption or a failure finishes the missing shards; complete ones are kept.

Options for both:
  --image=IMAGE          required (or $IMAGE): the container image, e.g.
                         us-docker.pkg.dev/my-project/my-repo/diffusion_jax:latest
  --workdir=gs://B/DIR   required (or $DJ_WORKDIR): the run directory every worker reads
  --workers=N            required: the number of workers
  --parallelism=P        at most P workers at once (default N)
  --config=CONFIG        the config inside the image (default configs/faces.py)
  --output-dir=DIR       the dataset (default: WORKDIR/generated)
  --job-name=NAME        the job's name (default diffusion-jax-generate, with a time stamp for
                         batch, whose job names are never reused)
  --gpus=G               GPUs per worker (default 1)
  --max-retries=R        retries of a failed worker (default 3)
  --dry-run              print the command and the rendered spec; submit nothing
  -h, --help             this text
Options for batch:
  --project=P            required (or $CLOUDSDK_CORE_PROJECT): the Google Cloud project
  --location=REGION      required (or $CLOUDSDK_BATCH_LOCATION): e.g. us-central1
  --machine-type=T       default g2-standard-8
  --gpu-type=T           default nvidia-l4
  --spot                 Spot VMs (preempted tasks are retried, up to --max-retries)
  --cpu-milli=M          CPU per worker in thousandths of a vCPU (default 4000)
  --memory-mib=M         memory per worker (default 16000)
  --max-run-duration=D   a worker's time limit (default 86400s)
Options for k8s:
  --namespace=NS         the namespace (default: kubectl's current one)
  --context=CTX          the kubectl context (default: the current one)
  --service-account=SA   the pods' Kubernetes service account (default "default"); it needs
                         access to the workdir's bucket (e.g. through Workload Identity)
  --replace              delete an existing Job of the same name first (a finished or failed Job
                         cannot be applied again; the dataset's complete shards are kept)

Everything after -- goes to `python -m diffusion_jax.main` in every worker.
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# --------------------------------------------------------------------------- options
[ $# -gt 0 ] || die "missing the platform: batch or k8s"
case "$1" in
  batch | k8s) platform="$1"; shift ;;
  -h | --help) usage; exit 0 ;;
  *) die "the first argument must be batch or k8s, not '$1'" ;;
esac

image="${IMAGE:-}"
workdir="${DJ_WORKDIR:-}"
workers=""
parallelism=""
config="configs/faces.py"
output_dir=""
job_name=""
gpus=1
max_retries=3
project="${CLOUDSDK_CORE_PROJECT:-}"
location="${CLOUDSDK_BATCH_LOCATION:-}"
machine_type=g2-standard-8
gpu_type=nvidia-l4
spot=0
cpu_milli=4000
memory_mib=16000
max_run_duration=86400s
namespace=""
context=""
service_account=default
replace=0
dry_run=0
main_flags=()

batch_only="--project --location --machine-type --gpu-type --spot --cpu-milli --memory-mib --max-run-duration"
k8s_only="--namespace --context --service-account --replace"

while [ $# -gt 0 ]; do
  option="$1"
  value=""
  has_value=0
  case "$option" in
    --*=*) value="${option#*=}"; option="${option%%=*}"; has_value=1 ;;
  esac
  case " $batch_only " in *" $option "*) [ "$platform" = batch ] || die "$option applies to batch only" ;; esac
  case " $k8s_only " in *" $option "*) [ "$platform" = k8s ] || die "$option applies to k8s only" ;; esac
  case "$option" in
    --image | --workdir | --workers | --parallelism | --config | --output-dir | --job-name | \
      --gpus | --max-retries | --project | --location | --machine-type | --gpu-type | \
      --cpu-milli | --memory-mib | --max-run-duration | --namespace | --context | --service-account)
      if [ "$has_value" = 0 ]; then
        [ $# -ge 2 ] || die "$option needs a value"
        value="$2"
        shift
      fi
      case "$option" in
        --image) image="$value" ;;
        --workdir) workdir="$value" ;;
        --workers) workers="$value" ;;
        --parallelism) parallelism="$value" ;;
        --config) config="$value" ;;
        --output-dir) output_dir="$value" ;;
        --job-name) job_name="$value" ;;
        --gpus) gpus="$value" ;;
        --max-retries) max_retries="$value" ;;
        --project) project="$value" ;;
        --location) location="$value" ;;
        --machine-type) machine_type="$value" ;;
        --gpu-type) gpu_type="$value" ;;
        --cpu-milli) cpu_milli="$value" ;;
        --memory-mib) memory_mib="$value" ;;
        --max-run-duration) max_run_duration="$value" ;;
        --namespace) namespace="$value" ;;
        --context) context="$value" ;;
        --service-account) service_account="$value" ;;
      esac
      ;;
    --spot) spot=1 ;;
    --replace) replace=1 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; main_flags=("$@"); break ;;
    *) die "unknown option $option (flags for the main job go after --)" ;;
  esac
  shift
done

[ -n "$image" ] || die "missing --image (or \$IMAGE): the project's container image (docker build -f launch/Dockerfile), e.g. --image=us-docker.pkg.dev/my-project/my-repo/diffusion_jax:latest"
[ -n "$workdir" ] || die "missing --workdir (or \$DJ_WORKDIR): the run directory with the trained model, e.g. --workdir=gs://my-bucket/runs/base"
[ -n "$workers" ] || die "missing --workers: the number of generation workers, e.g. --workers=8"
is_count "$workers" || die "--workers must be a positive integer, not '$workers'"
[ -n "$parallelism" ] || parallelism="$workers"
is_count "$parallelism" || die "--parallelism must be a positive integer, not '$parallelism'"
is_count "$gpus" || die "--gpus must be a positive integer, not '$gpus'"
case "$max_retries" in '' | *[!0-9]*) die "--max-retries must be a non-negative integer, not '$max_retries'" ;; esac
case "$workdir" in
  gs://?*) ;;
  *) echo "$PROG: warning: --workdir=$workdir is not a gs:// URL; every worker must see it (the spec mounts no volume)" >&2 ;;
esac
if [ "$platform" = batch ]; then
  [ -n "$project" ] || die "missing --project (or \$CLOUDSDK_CORE_PROJECT): the Google Cloud project, e.g. --project=my-project"
  [ -n "$location" ] || die "missing --location (or \$CLOUDSDK_BATCH_LOCATION): the Batch region, e.g. --location=us-central1"
  is_count "$cpu_milli" || die "--cpu-milli must be a positive integer, not '$cpu_milli'"
  is_count "$memory_mib" || die "--memory-mib must be a positive integer, not '$memory_mib'"
  [ "$max_retries" -le 10 ] || die "--max-retries: Cloud Batch allows at most 10"
  [ -n "$job_name" ] || job_name="diffusion-jax-generate-$(date +%Y%m%d-%H%M%S)"
  template="$LAUNCH_DIR/cloud_batch_generate.json"
else
  [ -n "$job_name" ] || job_name="diffusion-jax-generate"
  template="$LAUNCH_DIR/k8s_generate_job.yaml"
fi
case "$job_name" in
  [a-z]*[a-z0-9] | [a-z]) ;;
  *) die "--job-name must start with a lowercase letter and end with a letter or digit, not '$job_name'" ;;
esac
case "$job_name" in *[!a-z0-9-]*) die "--job-name may hold lowercase letters, digits and '-' only, not '$job_name'" ;; esac
[ "${#job_name}" -le 63 ] || die "--job-name is longer than 63 characters"

extra_args=()
[ -z "$output_dir" ] || extra_args+=("--config.generate.output_dir=$output_dir")
extra_args+=(${main_flags[@]+"${main_flags[@]}"})

# --------------------------------------------------------------------------- rendering
# The templates parse as they are: every {{NAME}} sits in a string. A number's placeholder is
# replaced with its quotes ("{{WORKERS}}" -> 8); a string's inside its quotes, escaped for JSON and
# YAML double-quoted strings alike; the line "{{EXTRA_ARGS}}" becomes one line per extra argument.
escaped() {
  local value="$1"
  case "$value" in *[[:cntrl:]]*) die "a value holds a control character: $(printf %q "$value")" ;; esac
  value="${value//\\/\\\\}"
  value="${value//\"/\\\"}"
  printf '%s' "$value"
}

provisioning_model=STANDARD
[ "$spot" = 0 ] || provisioning_model=SPOT
numbers=(WORKERS "$workers" PARALLELISM "$parallelism" GPUS "$gpus" MAX_RETRIES "$max_retries"
  CPU_MILLI "$cpu_milli" MEMORY_MIB "$memory_mib")
strings=(IMAGE "$image" WORKDIR "$workdir" CONFIG "$config" JOB_NAME "$job_name"
  SERVICE_ACCOUNT "$service_account" MACHINE_TYPE "$machine_type" GPU_TYPE "$gpu_type"
  PROVISIONING_MODEL "$provisioning_model" MAX_RUN_DURATION "$max_run_duration")

render() {
  local line indent argument i
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      *'"{{EXTRA_ARGS}}"'*)
        indent="${line%%[! ]*}"
        for argument in ${extra_args[@]+"${extra_args[@]}"}; do
          if [ "$platform" = batch ]; then
            printf '%s"%s",\n' "$indent" "$(escaped "$argument")"
          else
            printf '%s- "%s"\n' "$indent" "$(escaped "$argument")"
          fi
        done
        continue
        ;;
    esac
    for ((i = 0; i < ${#numbers[@]}; i += 2)); do
      line="${line//\"\{\{${numbers[i]}\}\}\"/${numbers[i + 1]}}"  # a number: "{{N}}" -> 8
      line="${line//\{\{${numbers[i]}\}\}/${numbers[i + 1]}}"  # within a string: "x={{N}}" -> "x=8"
    done
    for ((i = 0; i < ${#strings[@]}; i += 2)); do
      line="${line//\{\{${strings[i]}\}\}/$(escaped "${strings[i + 1]}")}"
    done
    case "$line" in *'{{'*'}}'*) die "unfilled placeholder in $template: $line" ;; esac
    printf '%s\n' "$line"
  done < "$template"
}

spec="$(render)"

if [ "$platform" = batch ]; then
  submit=(gcloud batch jobs submit "$job_name" "--project=$project" "--location=$location" --config=-)
  before=()
  tool=gcloud
else
  kubectl=(kubectl)
  [ -z "$context" ] || kubectl+=("--context=$context")
  [ -z "$namespace" ] || kubectl+=("--namespace=$namespace")
  submit=("${kubectl[@]}" apply -f -)
  before=()
  [ "$replace" = 0 ] || before=("${kubectl[@]}" delete job "$job_name" --ignore-not-found --wait=true)
  tool=kubectl
fi

if [ "$dry_run" = 1 ]; then
  if [ ${#before[@]} -gt 0 ]; then
    printf '%q ' "${before[@]}"
    printf '\n'
  fi
  echo "# $tool command (the rendered spec below, from ${template##*/}, is its standard input):"
  printf '%q ' "${submit[@]}"
  printf "<<'SPEC'\n%s\nSPEC\n" "$spec"
  exit 0
fi

command -v "$tool" > /dev/null || die "$tool is not on PATH"
[ ${#before[@]} = 0 ] || "${before[@]}"
printf '%s\n' "$spec" | "${submit[@]}"
if [ "$platform" = batch ]; then
  echo "$PROG: submitted Cloud Batch job $job_name ($workers workers);" \
    "follow it with: gcloud batch jobs describe $job_name --project=$project --location=$location"
else
  echo "$PROG: applied Indexed Job $job_name ($workers workers);" \
    "follow it with: ${kubectl[*]} get job $job_name; ${kubectl[*]} logs -l job-name=$job_name"
fi
