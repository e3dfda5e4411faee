#!/usr/bin/env bash
# Every GPU benchmark of docs/benchmarks.md, in stages that each fit a 10-minute command:
#
#   bash benchmarks/gpu_all.sh A   eager training: EDM 3 arms + NVlabs/edm, IDDPM 2 arms; bf16 and fp32  (<= 8 min)
#   bash benchmarks/gpu_all.sh B   compiled training, bf16: EDM 3 arms, IDDPM 2 arms                  (<= 8.5 min)
#   bash benchmarks/gpu_all.sh C   sampling (eager, compiled, NVlabs/edm), FID extraction, eager profiles (<= 8 min)
#   bash benchmarks/gpu_all.sh D   compiled profile, compiled fp32 training (lowest priority)         (<= 9.5 min)
#   bash benchmarks/gpu_all.sh        all four in sequence (where one command may run ~30 minutes)
#
# JSON lines go to $OUT/bench.jsonl (OUT: the device tool's output folder; ./out without one), the markdown rows
# to $OUT/rows.md, the kernel tables to $OUT/profile.md and each stage's log to $OUT/log-<stage>.txt. Back on
# the development machine: `python benchmarks/record.py <files_at>/bench.jsonl` appends the rows to
# docs/benchmarks.md; paste profile.md under "Top kernels". NVlabs/edm's code (for the reference arms) is read
# from $LORACLI_EDM_REF when set (a path on the machine that runs this; without it those arms are left out), and
# clean-fid from a wheel in .whl/ when present (else FID preprocessing is skipped).
# SMOKE=1 runs the same commands on the CPU with tiny networks and sizes (a check of this script, not figures).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
COMMON=(--jsonl "$OUT/bench.jsonl" --docs "$OUT/rows.md")

setup() {
  # The registry finds models through entry points, so loracli must be installed (editable: the code is this tree).
  "$PY" -c "import loracli.registry as r; r.get_model('edm')" 2>/dev/null \
    || "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "could not install loracli"; exit 1; }
  if ls .whl/clean_fid-*.whl >/dev/null 2>&1 && ! "$PY" -c "import cleanfid" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/clean_fid-*.whl \
      && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  [ -n "${LORACLI_EDM_REF:-}" ] || echo "note: LORACLI_EDM_REF is not set: the NVlabs/edm reference arms are left out"
  [ -n "${SMOKE:-}" ] && return
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
}

smoke_args() {  # later options win in argparse: these shrink every run to seconds on a CPU
  [ -n "${SMOKE:-}" ] || return 0
  case "$1" in
    *train_speed.py) echo --device cpu --tiny --batch 4 --steps 2 --warmup 1 ;;
    *sample_speed.py) echo --device cpu --tiny --num 4 --batch 2 --steps 2 ;;
    *fid_speed.py) echo --device cpu --num 4 --batch 2 ;;
    *profile_step.py) echo --device cpu --tiny --batch 4 --warmup 1 --steps 1 ;;
  esac
}

run() {  # run LIMIT_SECONDS SCRIPT ARGS...: one benchmark, killed if it overruns its share of the stage
  local limit=$1; shift
  echo "== $* (limit ${limit}s) $(date +%T)"
  # shellcheck disable=SC2046
  # SIGTERM at the limit: the training and sampling scripts then report the arms done so far; KILL 20 s later.
  timeout -k 20 "$limit" "$PY" "$@" "${COMMON[@]}" $(smoke_args "$1") || echo "!! $1 exited with $?"
}

REF=()
[ -n "${LORACLI_EDM_REF:-}" ] && REF=(--reference "$LORACLI_EDM_REF")  # a wrong path stops those scripts with a sentence

stage_A() {
  run 300 benchmarks/train_speed.py --model edm --arms baseline,uc-lora,only-lora,uc-lora@conv --precision bf16,fp32 \
    --compile off --steps 15 --warmup 4 "${REF[@]}"
  run 180 benchmarks/train_speed.py --model iddpm --precision bf16,fp32 --compile off --steps 20 --warmup 5
}
stage_B() {
  run 300 benchmarks/train_speed.py --model edm --precision bf16 --compile on --steps 20 --warmup 6
  run 200 benchmarks/train_speed.py --model iddpm --precision bf16 --compile on --steps 20 --warmup 6
}
stage_C() {
  run 120 benchmarks/sample_speed.py --precision bf16 --compile off --num 3072 --batch 1024 "${REF[@]}"
  run 140 benchmarks/sample_speed.py --precision fp32 --compile off --num 2048 --batch 1024 "${REF[@]}"
  run 130 benchmarks/sample_speed.py --precision bf16 --compile on --num 4096 --batch 1024
  run 50 benchmarks/fid_speed.py --num 8192 --batch 512
  run 90 benchmarks/profile_step.py --arms baseline,uc-lora --precision bf16 --out "$OUT/profile.md" "${REF[@]}"
}
stage_D() {
  run 140 benchmarks/profile_step.py --arms uc-lora --precision bf16 --compile on --warmup 5 --out "$OUT/profile.md"
  run 270 benchmarks/train_speed.py --model edm --precision fp32 --compile on --steps 10 --warmup 6
  run 140 benchmarks/train_speed.py --model iddpm --precision fp32 --compile on --steps 10 --warmup 6
}

stages=("${@:-A B C D}")
for stage in ${stages[*]}; do
  case "$stage" in
    A|B|C|D) ;;
    *) echo "unknown stage '$stage' (A, B, C or D)"; exit 2 ;;
  esac
  { setup; "stage_$stage"; } 2>&1 | tee -a "$OUT/log-$stage.txt"
done
echo "results: $OUT/bench.jsonl ($(wc -l < "$OUT/bench.jsonl" 2>/dev/null || echo 0) lines)"
