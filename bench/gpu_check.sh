#!/usr/bin/env bash
# nstd on a GPU: every figure issue 6 asks for, as JSON under $OUT, in one run (< 8 minutes on
# an H200). Run from the repository root:
#
#     OUT=/some/folder bench/gpu_check.sh            # on the GPU machine
#     OUT=/tmp/gc bench/gpu_check.sh --dry-run       # anywhere, on the CPU, tiny sizes (~2 min)
#     OUT=/tmp/gc bench/gpu_check.sh --quick         # the dry run on a slim network (1/16 of
#                                                    # the channels), without the compile step
#                                                    # (~30 s; tests/test_bench.py runs it)
#
# NSTD_GPU_CHECK_PYTHON: the interpreter for a dry run (default: the checkout's .venv).
#
# Writes (at most 8 files, flat, for the device tool):
#   env.json        python/torch/GPU facts, how nstd was made importable
#   iteration.json  ms per iteration at 512x512, 1024x576, 1920x1080, fp32 (TF32) and bf16,
#                   with peak GPU memory per row (the 1080p rows: the memory target)
#   sync.json       host syncs per iteration of the engine loop (torch sync debug mode; 0 = ok)
#   compare.json    bench/compare.py at 1024x576 (24 frames, nstd's real cold budget 300)
#   iteration_compiled.json  1024x576 bf16 with model.compile (torch.compile), for comparison
#   fps.json        end-to-end frames/s of the video job on a 1024x576 clip, default config,
#                   once with the default precision (fp32/TF32) and once with bf16
#   summary.json    each step's exit status and seconds
#   log.txt         everything the steps printed
#
# The machine has no network and the repo's venv does not travel: this script makes a venv on
# top of the machine's own python3 (torch preinstalled) with `--system-site-packages` and
# installs nstd into it with `pip install --no-deps --no-build-isolation -e .`; if that fails
# it falls back to PYTHONPATH=<repo> (the bench scripts also put the repo on sys.path).
# PyAV (`av`) is not in the H200 image; steps that read or write video (compare, fps) need it
# carried as a wheel in .whl/ at the repo root (ignored by git), fetched beforehand with
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_17_x86_64 -d .whl av==15.1.0
# and named in the device tool's `carry`. Without it those steps are skipped (and say so).
# Weights: random full-width VGG-19 (no network for the real ones): timings and memory are the
# real network's; the images mean nothing.
set -u
DRY=0
QUICK=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --quick) DRY=1; QUICK=1 ;;
        *) echo "usage: $0 [--dry-run | --quick]" >&2; exit 2 ;;
    esac
done
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/bench/out/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
WORK="$(mktemp -d /tmp/nstd-gpu-check.XXXXXX)"
export PYTHONUNBUFFERED=1
cd "$REPO" || exit 1
STARTED=$(date +%s)
SUMMARY="$WORK/summary.tsv"
: > "$SUMMARY"

say() { echo "[$(( $(date +%s) - STARTED ))s] $*" | tee -a "$LOG" >&2; }

# step NAME TIMEOUT_S COMMAND...: run with a time limit, log, record status; never aborts.
step() {
    local name="$1" limit="$2"; shift 2
    local t0=$(date +%s) rc
    say "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$SUMMARY"
    say "== $name: exit $rc after $(( $(date +%s) - t0 ))s"
}

# ---------------------------------------------------------------- environment
PY=python3
HOW="system python3 + PYTHONPATH"
if [ "$DRY" = 1 ] && [ -n "${NSTD_GPU_CHECK_PYTHON:-}" ]; then
    PY="$NSTD_GPU_CHECK_PYTHON"
    HOW="dry run: $PY"
elif [ "$DRY" = 1 ] && [ -x "$REPO/.venv/bin/python" ] && [ "${NSTD_GPU_CHECK_VENV:-0}" != 1 ]; then
    PY="$REPO/.venv/bin/python"  # dry run: the checkout's own venv, no new venv needed
    HOW="dry run: the checkout's .venv"
elif python3 -m venv --system-site-packages "$WORK/venv" >>"$LOG" 2>&1 &&
        "$WORK/venv/bin/python" -m pip install -q --no-deps --no-build-isolation --no-index \
            -e "$REPO" >>"$LOG" 2>&1; then
    PY="$WORK/venv/bin/python"
    HOW="venv --system-site-packages + pip install --no-deps -e ."
else
    say "venv/pip install failed (see log); falling back to PYTHONPATH"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$REPO"/.whl/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH="$WORK/site:$PYTHONPATH"
        HOW="$HOW; wheels from .whl/"
    else
        say "installing .whl/*.whl failed (see log)"
    fi
fi
HAVE_AV=0
"$PY" -c "import av" >>"$LOG" 2>&1 && HAVE_AV=1
"$PY" - "$OUT/env.json" "$HOW" "$HAVE_AV" "$DRY" <<'EOF' >>"$LOG" 2>&1
import json, platform, subprocess, sys, time
import torch
out, how, have_av, dry = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
env = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.version.split()[0],
       "torch": torch.__version__, "cuda": torch.version.cuda,
       "cuda_available": torch.cuda.is_available(), "how": how, "pyav": have_av,
       "dry_run": dry, "machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
               multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
    try:
        env["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        env["nvidia_smi"] = f"unavailable: {exc}"
json.dump(env, open(out, "w"), indent=2)
print(json.dumps(env))
EOF
say "python: $PY ($HOW); PyAV: $HAVE_AV"

# ---------------------------------------------------------------- figures
W_ARGS=""
if [ "$QUICK" = 1 ]; then
    # The plumbing, not the figures: a slim random network (the same code path as real
    # weights) for the steps that take --weights.
    if "$PY" -c "import sys; from nstd.testing.weights import write_random_vgg19; \
write_random_vgg19(sys.argv[1], seed=0, width_divisor=16)" "$WORK/vgg19-slim.pth" >>"$LOG" 2>&1
    then
        W_ARGS="--weights $WORK/vgg19-slim.pth"
    else
        say "could not write slim weights (see log); the steps use full-width ones"
    fi
fi
FPS_PRECISION=fp32,bf16
if [ "$QUICK" = 1 ]; then
    DEV=cpu; SIZES=64x48; PRECISION=fp32,bf16; ITER_ARGS="--iterations 2 --warmup 1"
    SYNC_SIZE=64x48
    CMP_ARGS="--clip-size 48x32 --max-side 32 --frames 2 --cold-iterations 2"
    CMP_ARGS="$CMP_ARGS --set video.frame_iterations=1"
    FPS_ARGS="--size 48x32 --frames 2 --set style.iterations=2 --set video.frame_iterations=1"
    FPS_PRECISION=fp32
elif [ "$DRY" = 1 ]; then
    DEV=cpu; SIZES=64x48,96x72; PRECISION=fp32,bf16; ITER_ARGS="--iterations 3 --warmup 1"
    COMPILED_SIZE=64x48; COMPILED_PRECISION=fp32
    SYNC_SIZE=64x48; CMP_ARGS="--clip-size 64x48 --max-side 48 --frames 3 --cold-iterations 4"
    FPS_ARGS="--size 64x48 --frames 4 --set style.iterations=4"
else
    DEV=cuda; SIZES=512x512,1024x576,1920x1080; PRECISION=fp32,bf16
    ITER_ARGS="--iterations 30 --warmup 5"
    COMPILED_SIZE=1024x576; COMPILED_PRECISION=bf16
    SYNC_SIZE=1024x576
    CMP_ARGS="--clip-size 1024x576 --max-side 1024 --frames 24 --cold-iterations 300"
    FPS_ARGS="--size 1024x576 --frames 48"
fi
# shellcheck disable=SC2086  # the *_ARGS are word lists on purpose
step iteration 90 "$PY" bench/iteration.py --device "$DEV" --sizes "$SIZES" \
    --precision "$PRECISION" $ITER_ARGS $W_ARGS --out "$OUT/iteration.json"
step sync 30 "$PY" bench/sync_check.py --device "$DEV" --size "$SYNC_SIZE" --json "$OUT/sync.json"
if [ "$HAVE_AV" = 1 ]; then
    # shellcheck disable=SC2086
    step fps 100 "$PY" bench/fps.py --device "$DEV" $FPS_ARGS $W_ARGS --precision "$FPS_PRECISION" \
        --json "$OUT/fps.json"
    # shellcheck disable=SC2086
    step compare 200 "$PY" bench/compare.py --device "$DEV" $CMP_ARGS $W_ARGS \
        --out "$WORK/compare" --json "$OUT/compare.json"
else
    say "PyAV missing: fps and compare skipped (carry its wheel in .whl/, see the header)"
    printf 'fps\tskipped: no PyAV\t0\ncompare\tskipped: no PyAV\t0\n' >> "$SUMMARY"
fi
# Last, and optional: compilation time is unpredictable, so it gets what is left of the
# 8 minutes (a 10 s margin for the summary); a timeout here loses nothing else.
LEFT=$(( 470 - ( $(date +%s) - STARTED ) ))
if [ "$QUICK" = 1 ]; then
    printf 'iteration_compiled\tskipped: --quick\t0\n' >> "$SUMMARY"
elif [ "$LEFT" -ge 20 ]; then
    step iteration_compiled "$LEFT" "$PY" bench/iteration.py --device "$DEV" \
        --sizes "$COMPILED_SIZE" --precision "$COMPILED_PRECISION" --compile --iterations 30 \
        --warmup 5 --out "$OUT/iteration_compiled.json"
else
    printf 'iteration_compiled\tskipped: no time left\t0\n' >> "$SUMMARY"
fi

"$PY" - "$SUMMARY" "$OUT/summary.json" "$(( $(date +%s) - STARTED ))" <<'EOF' >>"$LOG" 2>&1
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
steps = {name: {"exit": int(rc) if rc.lstrip("-").isdigit() else rc, "seconds": int(s)}
         for name, rc, s in rows}
json.dump({"steps": steps, "total_seconds": int(sys.argv[3]),
           "ok": all(v["exit"] == 0 for v in steps.values())}, open(sys.argv[2], "w"), indent=2)
EOF
say "done in $(( $(date +%s) - STARTED ))s; figures in $OUT"
rm -rf "$WORK"
