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
#  3. the synthetic full-size SD 1.5: UNet CFG step and VAE decodes (tessera bench), f16;
#  4. a 2048² render with a guide pass (benches/gpu/poster-2048.toml, f16) and one 512² window,
#     with peak VRAM (driver-reported, polled every 50 ms; includes the CUDA context);
#  5. the same render under `--max-memory 2G`;
#  6. PyTorch + diffusers on the same model and GPU (tools/torch_gpu_bench.py).
# Env: GPU_CHECK_DEVICE (default cuda; `cpu` rehearses the script on a machine with no GPU),
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
  local poll="$OUT/$name.vram"
  if [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$poll" 2>/dev/null &
    local poller=$!
  fi
  local t0 rc
  t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  local secs
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
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

export TESSERA_REPO=$PWD TESSERA_TEST_DEVICE=$DEVICE
# 1. Parity with diffusers on the GPU (the CPU suite's tests and tolerances).
for t in clip_parity unet_parity vae_parity vae_tiled txt2img_parity canvas_parity; do
  if [ -x "$BIN/$t" ]; then
    measured "parity-$t" 300 "$BIN/$t" --test-threads=2
    grep -E "test result|max\|diff\||FAILED|panicked" "$OUT/parity-$t.log" | head -20 >>"$summary"
  fi
done

# 2. One render on the GPU and on the CPU (tiny parity model, f32): latents compared.
spec=tests/fixtures/gpu-render.toml
for d in "$DEVICE" cpu; do
  measured "render-tiny-$d" 300 "$TESSERA" render "$spec" --model models/tiny-sd --device "$d" \
    --out "$OUT/tiny-$d.png" --save-latents "$OUT/tiny-$d.safetensors" --json
done
"$PY" - "$OUT/tiny-$DEVICE.safetensors" "$OUT/tiny-cpu.safetensors" <<'PYEOF' 2>&1 | tee -a "$summary"
import sys
from safetensors.numpy import load_file
a, b = (load_file(p)["latents"].astype("float64") for p in sys.argv[1:3])
d = abs(a - b).max()
print(f"render GPU vs CPU: latents max|diff| {d:.3e} (scale {abs(b).max():.3f}, max relative {d / max(1.0, abs(b).max()):.3e})")
PYEOF

# 3.-5. The synthetic full-size SD 1.5.
SD15=${GPU_CHECK_MODEL:-/tmp/sd15-synth}
[ -d "$SD15" ] || measured synth-sd15 300 "$TESSERA" model synth --arch sd15 --out "$SD15"
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then L=32 BIG=64 REP=1; else L=64 BIG=256 REP=5; fi
measured bench-unet-f16 200 "$TESSERA" bench unet --model "$SD15" --device "$DEVICE" --dtype f16 --batch 2 --latent $L --repeat $REP
grep -E "mean" "$OUT/bench-unet-f16.log" >>"$summary"
measured bench-unet-f32 200 "$TESSERA" bench unet --model "$SD15" --device "$DEVICE" --dtype f32 --batch 2 --latent $L --repeat $REP
grep -E "mean" "$OUT/bench-unet-f32.log" >>"$summary"
measured bench-vae-whole 200 "$TESSERA" bench vae-decode --model "$SD15" --device "$DEVICE" --dtype f16 --latent $L --repeat $REP
grep -E "mean" "$OUT/bench-vae-whole.log" >>"$summary"
measured bench-vae-tiled-2048 300 "$TESSERA" bench vae-decode --model "$SD15" --device "$DEVICE" --dtype f16 --latent $BIG --tile 512 --repeat 2
grep -E "mean" "$OUT/bench-vae-tiled-2048.log" >>"$summary"

size=(); [ "${GPU_CHECK_QUICK:-0}" = 1 ] && size=(--width 512 --height 512 --steps 2)
measured window-512 300 "$TESSERA" render benches/gpu/window-512.toml --model "$SD15" --device "$DEVICE" \
  --out "$OUT/window-512.png" --json
window_peak=$PEAK
measured poster-2048 500 "$TESSERA" render benches/gpu/poster-2048.toml --model "$SD15" --device "$DEVICE" \
  "${size[@]}" --out "$OUT/poster-2048.png" --json
[ "$window_peak" -gt 0 ] 2>/dev/null && say "poster-2048 peak / window-512 peak: $(echo "scale=3; $PEAK / $window_peak" | bc)"
measured poster-2048-budget-2G 500 "$TESSERA" render benches/gpu/poster-2048.toml --model "$SD15" \
  --device "$DEVICE" "${size[@]}" --steps 4 --max-memory 2G --out "$OUT/poster-2048-2G.png" --json
grep -E "memory budget|wrote|error" "$OUT/poster-2048-budget-2G.log" >>"$summary"

# 6. PyTorch + diffusers (the wheel carried in the bundle when the machine lacks diffusers).
if [ "$DEVICE" != cpu ]; then
  if ! "$PY" -c "import diffusers" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps --target /tmp/pylib "$BUNDLE"/diffusers-*.whl >"$OUT/pip.log" 2>&1
    export PYTHONPATH=/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
  fi
  measured torch 400 "$PY" tools/torch_gpu_bench.py "$SD15"
  grep "^torch-" "$OUT/torch.log" >>"$summary"
fi
say "done"
