#!/usr/bin/env bash
# One device call (< 10 minutes): build with the machine's torch; the GPU tests (tests/test_cuda.py,
# and the CUDA kernels against the exact reference of the arithmetic, tests/test_arithmetic_v2.py)
# with every kernel checked as it finishes (DETLSTM_CUDA_SYNC=1); the exhaustive canonical-function
# test; one small forward + backward under compute-sanitizer (memcheck, racecheck); cuDNN's own
# reproducibility; detlstm against cuDNN (tagger, large, stream, and tagger's batch sweep 1-16);
# device time per kernel in the launch variants not timed yet and the default (PROFILE_VARIANTS);
# where a training call's memory goes at its peak at large, detlstm and cuDNN (bench.gpu_memory,
# appended to the bench's report).
# A short table last; at most eight files under $OUT (what the device tool brings back):
#   summary.txt gpu_tests.log canonical.log sanitizer.log cudnn_repro.json profile.md
#   bench/report_cuda.md bench/results_cuda.json        (build.log only when the build fails)
# Usage on the device machine, from the repository root:
#   DETLSTM_GIT=$(git rev-parse --short HEAD) bash bench/gpu_session.sh   (the commit, from here)
# PHASES picks a subset, e.g. PHASES="build bench profile". Every phase has its own time limit and
# the whole stays under BUDGET seconds (default 570): a phase that no longer fits is skipped, and
# says so in the table.
set -uo pipefail
PHASES=${PHASES:-build tests canonical sanitizer repro bench profile memory}
BUDGET=${BUDGET:-570}
want() { [[ " $PHASES " == *" $1 "* ]]; }
OUT=${OUT:-/tmp/detlstm_gpu}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
export PYTHONUNBUFFERED=1
summary="$OUT/summary.txt"
t0=$(date +%s)
status() { printf '%-34s %s\n' "$1" "$2" | tee -a "$summary"; }
# seconds a phase may take: its own limit, or what is left of the budget if that is less
allow() { local left=$(( BUDGET - ($(date +%s) - t0) )); echo $(( left < $1 ? left : $1 )); }
# runs a phase under its limit; $1 name, $2 limit, rest the command. Returns the command's status.
phase() {
  local name=$1 limit; limit=$(allow "$2"); shift 2
  PHASE_SECONDS=0; PHASE_NOTE="skipped (budget spent)"
  if (( limit < 20 )); then return 99; fi
  local start=$(date +%s)
  timeout "$limit" "$@"
  local rc=$?
  PHASE_SECONDS=$(( $(date +%s) - start ))
  (( rc == 124 )) && PHASE_NOTE="TIMED OUT after ${limit} s" || PHASE_NOTE=""
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$summary" 2>&1
$PY -c "import torch;print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" >> "$summary" 2>&1
# the device's copy of .git may stand at an older commit: the caller passes DETLSTM_GIT=<commit>
echo "git ${DETLSTM_GIT:-$(git log -1 --format=%h 2>/dev/null)} (DETLSTM_GIT or the checkout's HEAD)" >> "$summary"

if want build; then
  start=$(date +%s)
  if DETLSTM_CUDA=1 MAX_JOBS=16 DETLSTM_CUDA_ARCHS="90" $PY -m pip install --no-build-isolation \
      -q -e . > /tmp/detlstm_build.log 2>&1; then
    status build "ok ($(( $(date +%s) - start )) s)"
  else
    cp /tmp/detlstm_build.log "$OUT/build.log"
    status build "FAILED (see build.log)"; tail -30 "$OUT/build.log"; exit 1
  fi
fi

if want tests; then
  xdist=""; $PY -c "import xdist" 2>/dev/null && xdist="-n 4"
  phase tests 200 env DETLSTM_CUDA_SYNC=1 $PY -m pytest -q -rfE --maxfail=20 $xdist tests/test_cuda.py \
    tests/test_arithmetic_v2.py -k "not all_float32_bit_patterns" -p no:cacheprovider \
    > "$OUT/gpu_tests.log" 2>&1
  status "GPU tests (${PHASE_SECONDS:-0} s)" "$PHASE_NOTE $(tail -1 "$OUT/gpu_tests.log")"
fi

if want canonical; then
  phase canonical 150 $PY -m pytest -q -rfE tests/test_cuda.py -k all_float32_bit_patterns \
    -p no:cacheprovider > "$OUT/canonical.log" 2>&1
  status "exp/sigmoid/tanh, 2^32 each (${PHASE_SECONDS:-0} s)" "$PHASE_NOTE $(tail -1 "$OUT/canonical.log")"
fi

if want sanitizer; then
  : > "$OUT/sanitizer.log"
  for tool in memcheck racecheck; do
    phase "$tool" 75 compute-sanitizer --tool "$tool" --error-exitcode 9 $PY bench/small_call.py \
      >> "$OUT/sanitizer.log" 2>&1
    rc=$?
    verdict=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer.log" | tail -1)
    status "compute-sanitizer $tool (${PHASE_SECONDS:-0} s)" "rc=$rc $PHASE_NOTE ${verdict:-no summary}"
  done
fi

if want repro; then
  phase repro 60 $PY bench/cudnn_repro.py > "$OUT/cudnn_repro.json" 2>&1
  for k in default deterministic; do
    status "cuDNN, $k settings" "$($PY -c "import json;r=json.load(open('$OUT/cudnn_repro.json'))['$k'];print('processes same bits:', r['identical'], '| in process:', r['same_in_process'], '| batch invariant:', r['batch_invariant'])" 2>/dev/null || echo unknown)"
  done
fi

if want bench; then
  # the batch sweep alone (tagger at batch 1-16, both modes): issue 13's small-batch target
  phase bench 180 $PY -m bench --device cuda --shapes tagger,large,stream --studies batch \
    --batch-sweep 1,2,4,8,16 --no-plots --repeats 7 --warmup 2 --out "$OUT/bench" \
    > /tmp/detlstm_bench.log 2>&1
  rc=$?
  status "bench (${PHASE_SECONDS:-0} s)" "$([ -s "$OUT/bench/report_cuda.md" ] && echo ok || echo "FAILED rc=$rc $PHASE_NOTE")"
  [ -s "$OUT/bench/report_cuda.md" ] || tail -15 /tmp/detlstm_bench.log
fi

if want profile; then
  # the shapes not timed yet, against the default; 1-3 (per-step, measured at first light) left out
  phase profile 120 $PY -m bench.gpu_profile --shapes tagger,large,stream --out "$OUT/profile.md" \
    --variants "${PROFILE_VARIANTS:-0,8,10,9,6,7,5,4}" \
    > /dev/null 2> /tmp/detlstm_profile.err
  rc=$?
  [ $rc -ne 0 ] && tail -5 /tmp/detlstm_profile.err >> "$OUT/profile.md"
  status "profile (${PHASE_SECONDS:-0} s)" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc $PHASE_NOTE")"
fi

# after the profile, which the budget must not starve; PHASES="build memory" runs it alone
if want memory; then
  mkdir -p "$OUT/bench"
  phase memory 60 $PY -m bench.gpu_memory --shapes large --competitors detlstm,cudnn-fp32 \
    >> "$OUT/bench/report_cuda.md" 2> /tmp/detlstm_memory.err
  rc=$?
  [ $rc -ne 0 ] && tail -5 /tmp/detlstm_memory.err
  status "memory at large (${PHASE_SECONDS:-0} s)" "$([ $rc -eq 0 ] && grep -E '^### ' "$OUT/bench/report_cuda.md" | sed 's/^### //' | tr '\n' ';' || echo "FAILED rc=$rc $PHASE_NOTE")"
fi

echo
[ -s "$OUT/bench/report_cuda.md" ] && grep -E "^\| (tagger|large|stream)" "$OUT/bench/report_cuda.md" | cut -d'|' -f2-8
[ -s "$OUT/bench/report_cuda.md" ] && grep -E "^\*\*Sweep over B|^\| (detlstm|cudnn-fp32) \|" "$OUT/bench/report_cuda.md"
grep -E "^\*\*|^## " "$OUT/profile.md" 2>/dev/null
echo
cat "$summary"
echo "total $(( $(date +%s) - t0 )) s"
