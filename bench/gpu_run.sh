#!/usr/bin/env bash
# The GPU figures in one go: the device's idle share under the streamed pipeline, the pipeline's
# worker scaling on the host's cores, and `python -m bench --full`'s training and encoding sections.
#   bash bench/gpu_run.sh OUTDIR [SECONDS]
# Each part is time-boxed (its own cap, and what is left of SECONDS), so one slow part does not cost
# the others; each writes its log and JSON to OUTDIR.
set -u
out=${1:?usage: bash bench/gpu_run.sh OUTDIR [SECONDS]}
budget=${2:-1800}
mkdir -p "$out"
start=$SECONDS

part() {  # name cap command...
  local name=$1 cap=$2
  shift 2
  local left=$((budget - (SECONDS - start) - 5))
  ((cap > left)) && cap=$left
  if ((cap < 30)); then
    echo "== $name: skipped, ${left}s left"
    return
  fi
  echo "== $name (at most ${cap}s): $*"
  timeout -k 5 "$cap" "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $? at ${SECONDS}s"
  grep -v "it/s\]\|s/it\]" "$out/$name.log" | tail -n 30
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv 2>/dev/null
part device_idle 200 python -m bench.device_idle --profile --json "$out/device-idle.json"
part pipeline_workers 90 python -m bench.pipeline --sections workers --workers 0,2,4,8,12 --pairs 40000 \
  --json "$out/pipeline-workers.json"
part bench_train 600 python -m bench --full --only train --steps 5 --repeats 2 --json "$out/bench-train.json"
part bench_encode 600 python -m bench --full --only encode --repeats 2 --json "$out/bench-encode.json"
