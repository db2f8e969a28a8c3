#!/usr/bin/env bash
# One device call (< 10 minutes): build with the machine's torch, run the GPU tests, check cuDNN's own
# reproducibility, time detlstm against cuDNN, profile where the time goes, and print a short table
# last. Eight files under $OUT (the device tool brings back at most eight).
# Usage on the device machine, from the repository root:  bash bench/gpu_session.sh
# PHASES picks a subset (default: all), e.g. PHASES="bench profile" for a second call on a machine
# that is still warm (the build stays).
set -uo pipefail
PHASES=${PHASES:-build tests repro bench profile}
want() { [[ " $PHASES " == *" $1 "* ]]; }
OUT=${OUT:-/tmp/detlstm_gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
summary="$OUT/summary.txt"
status() { printf '%-30s %s\n' "$1" "$2" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$summary" 2>&1
start=$(date +%s)
if ! want build; then
  status build skipped
elif DETLSTM_CUDA=1 MAX_JOBS=16 DETLSTM_CUDA_ARCHS="90" $PY -m pip install --no-build-isolation -q -e . \
    > "$OUT/build.log" 2>&1; then
  status build "ok ($(( $(date +%s) - start )) s)"
else
  status build "FAILED (see build.log)"; tail -30 "$OUT/build.log"; exit 1
fi

start=$(date +%s)
if want tests; then
  timeout 250 $PY -m pytest -q -x tests/test_cuda.py -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
  status "GPU tests ($(( $(date +%s) - start )) s)" "$(tail -1 "$OUT/gpu_tests.log")"
fi

if want repro; then
  timeout 60 $PY bench/cudnn_repro.py > "$OUT/cudnn_repro.json" 2>&1
  for k in default deterministic; do
    status "cuDNN same bits, $k" "$($PY -c "import json;print(json.load(open('$OUT/cudnn_repro.json'))['$k']['identical'])" 2>/dev/null || echo unknown)"
  done
fi

if want profile; then
  start=$(date +%s)
  timeout 90 $PY -m bench.gpu_profile --out "$OUT/profile.md" > /dev/null 2> "$OUT/profile.err"
  rc=$?
  [ -s "$OUT/profile.err" ] && [ $rc -ne 0 ] && tail -5 "$OUT/profile.err" >> "$OUT/profile.md"
  rm -f "$OUT/profile.err"
  status "profile ($(( $(date +%s) - start )) s)" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc")"
fi

want bench || { echo; cat "$summary"; exit 0; }
timeout 120 $PY -m bench --device cuda --shapes tagger,large --no-studies --no-plots --repeats 7 \
  --warmup 2 --out "$OUT/bench" > "$OUT/bench.md" 2>&1
status bench "$(grep -q '^| tagger' "$OUT/bench.md" && echo ok || echo FAILED)"
echo
grep -E "^\| (tagger|large)" "$OUT/bench.md" | cut -d'|' -f2-8
echo
cat "$summary"
