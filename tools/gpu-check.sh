#!/usr/bin/env bash
# The GPU checks of issue 15, as one unattended run on a CUDA machine that has no Rust
# toolchain and no network (the NVIDIA H100/H200 machine: driver 580, PyTorch with CUDA 13).
#
#   here:  tools/build-gpu-bundle.sh        (CUDA build of tessera + parity tests, as .xz)
#   there: tools/gpu-check.sh [OUT_DIR]     (from the repository root)
#
# Steps (each logged to OUT_DIR, one failing does not stop the others; a summary at the end):
#  1. the diffusers parity tests (tiny model, f32) on CUDA, at the CPU suite's tolerances;
#  2. the same render (tiny model, f32) on CUDA and on the CPU: latents compared;
#  3. the synthetic full-size SD 1.5: UNet CFG step (tessera bench) beside PyTorch's, with
#     candle's convolutions and, when the bundle has `tessera-cudnn`, cuDNN's (the faster one
#     renders the rest); batches of 2 and 4 windows per evaluation;
#  4. one 512² window and a 2048² render with a guide pass (benches/gpu/poster-2048.toml, f16),
#     with peak VRAM (driver-reported device total, polled every 50 ms; includes the CUDA
#     context): without a budget, and with `--max-memory` 1.15x the window's peak;
#  5. a batch of three tiny specs sharing a model (loaded once, on the device);
#  6. the poster under `--max-memory 2G`; the exact tiled 2048² VAE decode (stores in host RAM,
#     then in VRAM); with GPU_CHECK_FULL the f32 UNet step, the whole 512² decode and PyTorch's
#     VAE decodes (tools/torch_gpu_bench.py).
# Env: GPU_CHECK_MEMORY=1 (memory checks only, see below), GPU_CHECK_STEPS="a b" (only the
#      steps named), GPU_CHECK_TRACE=1 (TESSERA_DEVICE_TRACE on the 2G run),
#      GPU_CHECK_SHORT=1 (parity, GPU vs CPU, the 2048² render and its window only),
#      GPU_CHECK_FULL=1 (also the f32 UNet step, the whole 512² decode and PyTorch's decodes),
#      GPU_CHECK_DEVICE (default cuda; `cpu` rehearses the script on a machine with no GPU),
#      GPU_CHECK_BUNDLE (default target/gpu), GPU_CHECK_QUICK=1 (small sizes, for rehearsal).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUT"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUNDLE=${GPU_CHECK_BUNDLE:-target/gpu}
PY=${PYTHON:-python3}
BIN=/tmp/tessera-gpu
mkdir -p "$BIN"
summary="$OUT/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }

# Unpack the bundle (xz(1) may be absent there: python's lzma).
for f in "$BUNDLE"/*.xz; do
  [ -e "$f" ] || continue
  "$PY" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' \
    "$f" "$BIN/$(basename "${f%.xz}")" && chmod +x "$BIN/$(basename "${f%.xz}")"
done
TESSERA=$BIN/tessera
[ -x "$TESSERA" ] || TESSERA=target/release/tessera

# The CUDA 13 libraries of the machine's PyTorch (pip nvidia-* packages) and the driver's.
if [ "$DEVICE" != cpu ]; then
  dirs=""
  while read -r nv; do
    for d in "$nv"/cu13/lib "$nv"/*/lib; do [ -d "$d" ] && dirs="$dirs:$d"; done
  done < <("$PY" -c 'import importlib.util as u; s=u.find_spec("nvidia"); [print(p) for p in (s.submodule_search_locations if s else [])]')
  for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/libcuda.so.1" ] && dirs="$dirs:$d"
  done
  export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
  ldd "$TESSERA" | grep "not found" && say "unresolved libraries (see above)"
fi
say "device: $DEVICE; $(head -1 "$OUT/nvidia-smi.txt" 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee -a "$summary"

# Run a command with a timeout; its peak GPU memory (MiB used on the device, polled) into $PEAK.
PEAK=0
measured() { # name timeout cmd...
  local name=$1 limit=$2; shift 2
  # GPU_CHECK_STEPS: only the steps named there (space-separated), e.g. a short second visit.
  if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then return 1; fi
  # GPU_CHECK_DEADLINE: seconds after which no step starts (and none outlives it), so the
  # summary and the logs' archive are written before the visit's limit.
  local left=$(( ${GPU_CHECK_DEADLINE:-100000} - SECONDS ))
  if [ "$left" -lt 15 ]; then say "$name: skipped (deadline)"; return 1; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local poll="$OUT/$name.vram"
  if [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$poll" 2>/dev/null &
    local poller=$!
  fi
  local t0 rc secs
  t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  secs=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN {printf "%.2f", a - b}')
  if [ "$DEVICE" != cpu ]; then
    kill "$poller" 2>/dev/null
    wait "$poller" 2>/dev/null
    PEAK=$(sort -n "$poll" | tail -1)
    local base
    base=$(head -1 "$poll")
    say "$name: rc=$rc, ${secs}s, peak VRAM ${PEAK} MiB (device total, idle ${base} MiB)"
  else
    say "$name: rc=$rc, ${secs}s"
  fi
  return $rc
}

export TESSERA_REPO=$PWD TESSERA_TEST_DEVICE=$DEVICE TESSERA_BIN=$TESSERA
# 1. Parity with diffusers on the GPU (the CPU suite's tests and tolerances).
for t in gpu_parity; do
  if [ -x "$BIN/$t" ]; then
    measured "parity-$t" 240 "$BIN/$t" --test-threads=2 --nocapture
    grep -E "test result|max\|diff\||FAILED|panicked|^test " "$OUT/parity-$t.log" | head -60 >>"$summary"
  fi
done

# 2. One render on the GPU and on the CPU (tiny parity model, f32): latents compared.
spec=tests/fixtures/gpu-render.toml
for d in "$DEVICE" cpu; do
  measured "render-tiny-$d" 90 "$TESSERA" render "$spec" --model models/tiny-sd --device "$d" \
    --out "$OUT/tiny-$d.png" --save-latents "$OUT/tiny-$d.safetensors" --json
done
"$PY" - "$OUT/tiny-$DEVICE.safetensors" "$OUT/tiny-cpu.safetensors" <<'PYEOF' 2>&1 | tee -a "$summary"
import sys
from safetensors.numpy import load_file
a, b = (load_file(p)["latents"].astype("float64") for p in sys.argv[1:3])
d = abs(a - b).max()
print(f"render GPU vs CPU: latents max|diff| {d:.3e} (scale {abs(b).max():.3f}, max relative {d / max(1.0, abs(b).max()):.3e})")
PYEOF

# 3.-6. The synthetic full-size SD 1.5 (f16 weights: half the bytes to write and read), in
# order of what matters most should the visit run out of time.
SD15=${GPU_CHECK_MODEL:-/tmp/sd15-synth}
[ -d "$SD15" ] || measured synth-sd15 300 "$TESSERA" model synth --arch sd15 --dtype f16 --out "$SD15"
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then L=32 BIG=64 REP=1; else L=64 BIG=256 REP=5; fi
bench() { # name args...
  local name=$1; shift
  measured "$name" 150 "$TESSERA" bench "$@" --model "$SD15" --device "$DEVICE"
  grep -E "mean" "$OUT/$name.log" >>"$summary"
}
torch() { # name what
  [ "$DEVICE" = cpu ] && return
  if ! "$PY" -c "import diffusers" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps --target /tmp/pylib "$BUNDLE"/diffusers-*.whl >"$OUT/pip.log" 2>&1
    export PYTHONPATH=/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
  fi
  measured "$1" 200 "$PY" tools/torch_gpu_bench.py "$SD15" --what "$2"
  grep "^torch-" "$OUT/$1.log" >>"$summary"
}
short() { [ "${GPU_CHECK_SHORT:-0}" = 1 ]; }
# GPU_CHECK_MEMORY=1: the memory checks only (no UNet step benches, no PyTorch; cuDNN's binary
# renders when the bundle has it).
memory_only() { [ "${GPU_CHECK_MEMORY:-0}" = 1 ]; }
memory_only && [ -x "$BIN/tessera-cudnn" ] && TESSERA=$BIN/tessera-cudnn
memory_only || short || bench bench-unet-f16 unet --dtype f16 --batch 2 --latent $L --repeat $REP
if ! memory_only && ! short && [ -x "$BIN/tessera-cudnn" ]; then
  plain=$TESSERA
  TESSERA=$BIN/tessera-cudnn bench bench-unet-f16-cudnn unet --dtype f16 --batch 2 --latent $L --repeat $REP
  mean() { grep -o "mean [0-9.]*" "$OUT/$1.log" | awk '{print $2}'; }
  if awk -v a="$(mean bench-unet-f16-cudnn)" -v b="$(mean bench-unet-f16)" 'BEGIN {exit !(a > 0 && a < b)}'; then
    TESSERA=$BIN/tessera-cudnn
  fi
  say "renders below use $(basename "$TESSERA") (faster UNet step); candle's: $(basename "$plain")"
fi
memory_only || short || bench bench-unet-f16-x2 unet --dtype f16 --batch 4 --latent $L --repeat $REP
memory_only || short || torch torch-unet unet-512

size=(); steps=()
[ "${GPU_CHECK_QUICK:-0}" = 1 ] && size=(--width 512 --height 512) && steps=(--steps 2)
measured window-512 120 "$TESSERA" render benches/gpu/window-512.toml --model "$SD15" --device "$DEVICE" \
  "${steps[@]}" --out "$OUT/window-512.png" --json
window_peak=$PEAK
grep -E "^(encode|canvas|decode|phase|wrote)" "$OUT/window-512.log" >>"$summary"
poster() { # name extra-args...
  local name=$1; shift
  measured "$name" 300 "$TESSERA" render benches/gpu/poster-2048.toml --model "$SD15" --device "$DEVICE" \
    "${size[@]}" "${steps[@]}" --out "$OUT/$name.png" --json "$@"
  grep -E "^(memory budget|encode|canvas|decode|guide pass|phase|wrote|error)" "$OUT/$name.log" >>"$summary"
  [ "$window_peak" -gt 0 ] 2>/dev/null &&
    say "$name peak / window-512 peak (device totals): $(awk -v a="$PEAK" -v b="$window_peak" 'BEGIN {printf "%.3f", a / b}')"
}
# Without a budget the tiled VAE's stores take free VRAM (fastest); with a budget of 1.15x the
# window's measured peak the render must stay within it (issue 15's bound).
poster poster-2048
[ "$window_peak" -gt 0 ] 2>/dev/null &&
  poster poster-2048-budget-window --max-memory "$(( window_peak * 115 / 100 ))M"
mkdir -p "$OUT/batch"
for i in 1 2 3; do
  printf '[canvas]\nwidth = 256\nheight = 256\nseed = %s\nsteps = 4\n[prompt]\ntext = "a poster %s"\n' \
    "$i" "$i" >"$OUT/batch/spec-$i.toml"
done
short || measured batch-tiny 120 "$TESSERA" render "$OUT/batch" --model models/tiny-sd \
  --device "$DEVICE" --json
grep -E "^\{" "$OUT/batch-tiny.log" | "$PY" -c 'import json,sys
for l in sys.stdin:
    r = json.loads(l); p = r.get("report", {})
    print("batch:", p.get("output"), p.get("device"), "loads", p.get("model_loads"), "held", r.get("models_held"))' >>"$summary" 2>&1
trace=(); [ "${GPU_CHECK_TRACE:-0}" = 1 ] && trace=(env TESSERA_DEVICE_TRACE=1)
short || measured poster-2048-budget-2G 300 "${trace[@]}" "$TESSERA" render benches/gpu/poster-2048.toml --model "$SD15" \
  --device "$DEVICE" "${size[@]}" --steps 2 --max-memory 2G --out "$OUT/poster-2048-2G.png" --json
grep -E "^(memory budget|encode|canvas|decode|guide pass|phase|wrote|error)" "$OUT/poster-2048-budget-2G.log" >>"$summary"
short || bench bench-vae-tiled-2048-host vae-decode --dtype f16 --latent $BIG --tile 512 --store-mib 0 --repeat 1
short || bench bench-vae-tiled-2048 vae-decode --dtype f16 --latent $BIG --tile 512 --repeat 2
full() { [ "${GPU_CHECK_FULL:-0}" = 1 ]; }
full && bench bench-unet-f32 unet --dtype f32 --batch 2 --latent $L --repeat $REP
full && bench bench-vae-whole vae-decode --dtype f16 --latent $L --repeat $REP
full && torch torch-vae vae-512,vae-2048,vae-2048-tiled
# Few files come back from the GPU machine: the logs travel as one archive.
# (Written outside OUT first: tar refuses an archive inside the folder it is reading.)
tar czf /tmp/gpu-check-logs.tgz -C "$OUT" --exclude '*.png' --exclude '*.safetensors' . &&
  find "$OUT" -type f ! -name summary.txt -delete && mv /tmp/gpu-check-logs.tgz "$OUT/logs.tgz"
say "done"
