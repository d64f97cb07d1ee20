#!/usr/bin/env bash
# GPU check (issue 12, item 5c): on ONE lent CUDA GPU, in about 7 minutes of a 9-minute budget,
#   - measure the single-device latency of sdxl 1024^2, pixart-alpha 1024^2 and 2048^2 and
#     flux-dev 1024^2 (bf16, random weights, 4 steps, 1 warm-up loop, median of 3 timed loops) in
#     real worlds of one rank: NCCL backend, steps timed after a device synchronize, NVML sampling
#     (configs/perf/gpu_check.yaml and gpu_check_2048.yaml, their `real` entries), and of the
#     video DiT wan2.1-t2v-1.3b at 81x480x832 (2 steps; configs/perf/gpu_check_video.yaml);
#   - calibrate the GPU's operator curves (`diffscale calibrate --device cuda`: CUDA-event timing)
#     into a measured profile;
#   - exercise NCCL, the comm ledger's CUDA-event path and NVML in a world of one rank (NCCL
#     refuses two ranks on one GPU, so no two-rank world is tried);
#   - run the same five runs as analytic twins (meta device, operators recorded, nothing computed);
#   - project them, unanchored, in bf16, on the catalog profile of the GPU (8xH200-NVLink) and on
#     the measured profile, and compare with the measurements: target |error| <= 15%.
#
# Usage, from the repository root (nothing in CI runs this; it needs a CUDA GPU):
#   OUT=/some/dir bash benchmarks/gpu_check.sh        # OUT defaults to ./gpu_check_out
# Through the device tool (which sets OUT): fetch the diffusers wheel into .whl/ first (below),
# then run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600).
# What comes back under $OUT (at most 8 files, no sub-folders, as the device tool returns them):
#   gpu_check.md   the comparison page (environment, stages, measured, projected vs measured,
#                  memory estimate vs measured peak, calibrated profile, NCCL/CUDA-event/NVML probe)
#   gpu_check.csv  the comparison, one row per run and profile
#   gpu_check.log  this script's log (each stage's full output is in the bundle's logs/)
#   local-<GPU>.yaml, local-<GPU>.png, local-<GPU>-ops.png   the measured profile and its plots
#   gpu_check_bundle.tar.gz   the results store (results/results.db, runs/*/trace.npz, nvml.csv),
#                  reports, logs, generated configs, env.txt, nccl_probe.json; rewritten after
#                  every stage, so a run cut short still returns what it had
# Commit the profile as configs/hardware/local-<GPU>.yaml, the page and the CSV under reports/.
#
# Python: $GPU_CHECK_PYTHON if set; else .venv/bin/python if it imports torch and diffusers; else
# python3 if it imports torch (the lent H200 machines: torch 2.11 + CUDA 13 and everything else
# diffscale imports are there, except diffusers, which has to travel as a wheel: on the machine
# that calls the device tool, `python3 -m pip download --no-deps --only-binary=:all: -d .whl
# diffusers==0.42.1` (.whl/ is git-ignored) and name `.whl` in the call's carry; this script
# installs .whl/*.whl into $GPU_CHECK_WORK/site); else `make .venv/.installed` (pip, which needs
# a reachable index or wheelhouse). The repository itself is used from the source tree
# (PYTHONPATH), so no install of diffscale is needed.
#
# Knobs (environment): OUT, GPU_CHECK_WORK (scratch, default /tmp/gpu_check_work; a second run
# there resumes: runs stored ok and an existing profile are kept), GPU_CHECK_BUDGET_S (default
# 540: every stage's timeout is clipped to what is left), GPU_CHECK_CATALOG (default by GPU name,
# 8xH200-NVLink for an H200), GPU_CHECK_PROFILE (default local-<GPU name>), GPU_CHECK_COMMIT (the
# commit checked, when the copy has no .git), GPU_CHECK_RECALIBRATE=1 (calibrate again).
# Expected device time (H200, 16 cores): environment 0.3 min, real runs 2.2, calibration 1.5,
# probe 0.3, analytic twins 1.3, projections 0.5, comparison 0.3: about 7 minutes.
set -euo pipefail

START=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
RESERVE=40 # seconds kept for the comparison and the bundle at the end
mkdir -p "$WORK/logs" "$WORK/configs" "$WORK/profile" "$WORK/report"
WORK=$(cd "$WORK" && pwd)
STAGES=$WORK/stages.tsv
: >"$STAGES"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg DIFFSCALE_OFFLINE=1 HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$WORK" # every relative path diffscale writes (reports/, reports/calibration/) lands here

log() { echo "== [$(date -u +%H:%M:%S) +$(($(date +%s) - START))s] $*"; }
remaining() { echo $((BUDGET - ($(date +%s) - START))); }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$STAGES"; }

pack() { # what $OUT returns: the bundle, rewritten after every stage (a cut run keeps the last)
  local items=() f
  for f in results report reports logs configs profile env.txt nccl_probe.json stages.tsv; do
    [[ -e $WORK/$f ]] && items+=("$f")
  done
  local tmp=$WORK/bundle.tmp
  rm -f "$tmp"
  tar -czf "$tmp" -C "$WORK" --exclude='.lock' "${items[@]}" 2>/dev/null || true
  if [[ -f $tmp ]] && (($(stat -c %s "$tmp") > 15 * 1024 * 1024)); then # 16 MiB a file comes back
    tar -czf "$tmp" -C "$WORK" --exclude='.lock' --exclude='latents.pt' --exclude='images' \
      "${items[@]}" 2>/dev/null || true
  fi
  if [[ -f $tmp ]]; then mv -f "$tmp" "$OUT/gpu_check_bundle.tar.gz"; fi
  return 0
}

# stage NAME CAP_S CMD...: CMD under a timeout of min(CAP_S, budget left - reserve), its output
# in logs/NAME.log; the outcome goes to stages.tsv; never stops the script (returns CMD's status)
stage() {
  local name=$1 cap=$2
  shift 2
  local left t t0 rc=0
  left=$(($(remaining) - RESERVE))
  t=$((cap < left ? cap : left))
  if ((t < 20)); then
    log "stage $name SKIPPED: ${left}s of the budget left"
    record "$name" skipped 0 "budget: ${left}s left"
    return 1
  fi
  log "stage $name (timeout ${t}s): $*"
  t0=$(date +%s)
  timeout -k 15 "$t" "$@" >"$WORK/logs/$name.log" 2>&1 || rc=$?
  local dt=$(($(date +%s) - t0))
  if ((rc == 0)); then
    log "stage $name ok in ${dt}s"
    record "$name" ok "$dt"
  else
    local why="exit code $rc"
    ((rc == 124 || rc == 137)) && why="timed out after ${t}s"
    log "stage $name FAILED ($why) in ${dt}s; the end of logs/$name.log:"
    tail -n 30 "$WORK/logs/$name.log" | sed 's/^/    /'
    record "$name" failed "$dt" "$why"
  fi
  pack
  return "$rc"
}

skip() { # skip NAME WHY
  log "stage $1 SKIPPED: $2"
  record "$1" skipped 0 "$2"
}

# -- 1. environment: a Python with torch (CUDA) and diffusers; versions; nvidia-smi --------------
has() { "$1" -c "import $2" >/dev/null 2>&1; }
choose_python() {
  if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then
    PY=$GPU_CHECK_PYTHON HOW="GPU_CHECK_PYTHON"
    return 0
  fi
  if [[ -x $REPO/.venv/bin/python ]] && has "$REPO/.venv/bin/python" "torch, diffusers"; then
    PY=$REPO/.venv/bin/python HOW=".venv (existing)"
    return 0
  fi
  if command -v python3 >/dev/null && has python3 torch; then
    PY=$(command -v python3) HOW="python3 with its own torch"
    if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
      log "installing carried wheels: $(cd "$REPO/.whl" && echo ./*.whl)"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$REPO"/.whl/*.whl && HOW="$HOW + carried wheels (.whl)"
    fi
    export PYTHONPATH="$PYTHONPATH:$WORK/site" # the carried wheels only (--no-deps): no clash
    if ! has "$PY" diffusers; then            # a configured local wheelhouse, if the pip has one
      log "diffusers missing: trying pip (no carried wheel)"
      PIP_DEFAULT_TIMEOUT=10 PIP_RETRIES=1 timeout 90 "$PY" -m pip install -q --no-deps \
        --no-compile --target "$WORK/site" "diffusers>=0.35" || true
    fi
    has "$PY" diffusers && return 0
    log "python3 has torch but no diffusers; trying make"
  fi
  if PIP_DEFAULT_TIMEOUT=10 PIP_RETRIES=1 timeout 240 make -C "$REPO" .venv/.installed; then
    PY=$REPO/.venv/bin/python HOW="make .venv/.installed"
    return 0
  fi
  return 1
}

PY="" HOW=""
t0=$(date +%s)
if choose_python >"$WORK/logs/env.log" 2>&1 && has "$PY" "torch, diffusers, suite.commands.cli"; then
  log "python: $PY ($HOW)"
  record env ok $(($(date +%s) - t0)) "$HOW"
else
  log "no usable Python (torch + diffusers) found; see logs/env.log"
  tail -n 30 "$WORK/logs/env.log" | sed 's/^/    /'
  record env failed $(($(date +%s) - t0)) "no Python with torch and diffusers"
  pack
  exit 1
fi
DS=("$PY" -m suite)
HELPER=("$PY" "$REPO/benchmarks/gpu_check_compare.py")
{
  "${HELPER[@]}" env --allow-cpu
  echo "python env: $HOW"
  echo "--- nvidia-smi"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi 2>&1 || true
    nvidia-smi --format=csv --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,temperature.gpu 2>&1 || true
  else
    echo "nvidia-smi: not on PATH"
  fi
} >"$WORK/env.txt" 2>&1 || true
cat "$WORK/env.txt"
CUDA=0
"$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' && CUDA=1
GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null || true)
SLUG=$(echo "${GPU#NVIDIA }" | tr -cs 'A-Za-z0-9' '-' | sed 's/^-*//; s/-*$//')
PROFILE=${GPU_CHECK_PROFILE:-local-${SLUG:-gpu}}
case "$GPU" in
*H200*) catalog=8xH200-NVLink ;;
*H100*) catalog=8xH100-NVLink ;;
*A100*80GB*) catalog=8xA100-80GB-NVLink ;;
*L40S*) catalog=8xL40S-PCIe4 ;;
*L40*) catalog=8xL40-PCIe4 ;;
*4090*) catalog=8xRTX4090-PCIe4 ;;
*) catalog=8xH200-NVLink ;;
esac
CATALOG=${GPU_CHECK_CATALOG:-$catalog}
PROFILE_YAML=$WORK/profile/$PROFILE.yaml
log "GPU: ${GPU:-none}; catalog profile $CATALOG; measured profile $PROFILE; work dir $WORK; out $OUT"
pack

# -- 2. real single-device runs (NCCL world of 1, CUDA sync timing, NVML) -------------------------
for part in gpu_check gpu_check_2048 gpu_check_video; do
  for mode in real analytic; do
    "${HELPER[@]}" subset "$REPO/configs/perf/$part.yaml" --world-mode "$mode" \
      --out "$WORK/configs/${part}_$mode.yaml" || log "subset of $part.yaml ($mode) FAILED"
  done
done
RUN=("${DS[@]}" run --out "$WORK/results" --no-progress --no-report)
if ((CUDA)); then
  stage real_1024 240 "${RUN[@]}" "$WORK/configs/gpu_check_real.yaml" || true
  stage real_2048 120 "${RUN[@]}" "$WORK/configs/gpu_check_2048_real.yaml" || true
  stage real_video 120 "${RUN[@]}" "$WORK/configs/gpu_check_video_real.yaml" || true
else
  skip real_1024 "no CUDA device"
  skip real_2048 "no CUDA device"
  skip real_video "no CUDA device"
fi

# -- 3. operator curves of the GPU (CUDA events; collectives of a 2-rank gloo world, small sizes) -
if ((!CUDA)); then
  skip calibrate "no CUDA device"
elif [[ -f $PROFILE_YAML && ${GPU_CHECK_RECALIBRATE:-0} != 1 ]]; then
  skip calibrate "kept $PROFILE_YAML (GPU_CHECK_RECALIBRATE=1 measures again)"
else
  stage calibrate 240 "${DS[@]}" calibrate --device cuda --name "$PROFILE" \
    --out "$WORK/profile" --world-sizes 2 --sizes 1K-64M --threads 1 || true
fi
for f in "$PROFILE_YAML" "$WORK/reports/calibration/$PROFILE.png" \
  "$WORK/reports/calibration/$PROFILE-ops.png"; do
  if [[ -f $f ]]; then cp -f "$f" "$OUT/"; fi
done

# -- 4. NCCL, ledger CUDA events, NVML in a world of one rank ---------------------------------------
if ((CUDA)); then
  stage nccl_probe 90 "${HELPER[@]}" nccl-probe --out "$WORK/nccl_probe.json" || true
else
  skip nccl_probe "no CUDA device"
fi

# -- 5. analytic twins (meta device, CPU only: nothing computed) ----------------------------------
stage analytic_1024 150 "${RUN[@]}" "$WORK/configs/gpu_check_analytic.yaml" || true
stage analytic_2048 90 "${RUN[@]}" "$WORK/configs/gpu_check_2048_analytic.yaml" || true
stage analytic_video 90 "${RUN[@]}" "$WORK/configs/gpu_check_video_analytic.yaml" || true

# -- 6. projections (unanchored, bf16) on the catalog and the measured profile --------------------
if [[ -f $WORK/results/results.db ]]; then
  # --source prices the real runs' own projections (not compared): the measured profile, if any
  source=$CATALOG
  [[ -f $PROFILE_YAML ]] && source=$PROFILE_YAML
  stage project_catalog 90 "${DS[@]}" project "$WORK/results" --hardware "$CATALOG" \
    --source "$source" --dtype bf16 --out "$WORK/report/projection_catalog" || true
  if [[ -f $PROFILE_YAML ]]; then
    stage project_measured 90 "${DS[@]}" project "$WORK/results" --hardware "$PROFILE_YAML" \
      --source "$PROFILE_YAML" --dtype bf16 --out "$WORK/report/projection_measured" || true
  else
    skip project_measured "no measured profile"
  fi
  stage report 60 "${DS[@]}" report "$WORK/results" --out "$WORK/report/measured" || true
else
  skip project_catalog "no results store"
fi

# -- 7. comparison page and CSV ------------------------------------------------------------------
log "comparison"
compare=("${HELPER[@]}" compare "$WORK/results/results.db" --md "$OUT/gpu_check.md"
  --csv "$OUT/gpu_check.csv" --env "$WORK/env.txt" --stages "$STAGES"
  --probe "$WORK/nccl_probe.json" --profile "$PROFILE_YAML")
# memory estimates (a meta forward per workload) only when the budget allows
if (($(remaining) > 60)); then
  compare+=(--configs "$REPO/configs/perf/gpu_check.yaml,$REPO/configs/perf/gpu_check_2048.yaml,$REPO/configs/perf/gpu_check_video.yaml")
fi
rc=0
timeout -k 5 $(($(remaining) > 30 ? $(remaining) : 30)) "${compare[@]}" >"$WORK/logs/compare.log" 2>&1 || rc=$?
cat "$WORK/logs/compare.log"
pack
failed=$(grep -c $'\tfailed\t' "$STAGES" || true)
log "done in $(($(date +%s) - START))s: $failed stage(s) failed, comparison exit code $rc; files in $OUT:"
ls -la "$OUT"
((failed == 0 && rc == 0))
