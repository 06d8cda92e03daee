#!/usr/bin/env bash
# Build tessera and its parity tests for CUDA here (no GPU needed) and pack them, with the
# diffusers wheel, into target/gpu/ for tools/gpu-check.sh on the GPU machine.
# Needs the CUDA 13.0 build toolchain from PyPI: ../shared/notes/cuda-build.md, i.e.
#   bash ../shared/tools/cuda/setup-cuda-build.sh ~/cuda-build
# Env: CUDA_BUILD (default ~/cuda-build), CARGO_TARGET_DIR (default target/cuda; keeps the CPU
# build's target/ intact).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "${CUDA_BUILD:-$HOME/cuda-build}/env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
flags=(--release --features cuda --config profile.release.strip=true)
cargo build "${flags[@]}" --bin tessera
tests=(gpu_parity)
mapfile -t exes < <(cargo test "${flags[@]}" --no-run "${tests[@]/#/--test=}" --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"] + " " + m["executable"])')
mkdir -p target/gpu
xz -T2 -6 -c "$CARGO_TARGET_DIR/release/tessera" >target/gpu/tessera.xz
for e in "${exes[@]}"; do
  read -r name path <<<"$e"
  xz -T2 -6 -c "$path" >"target/gpu/$name.xz"
done
ls target/gpu/diffusers-*.whl >/dev/null 2>&1 ||
  python3 -m pip download --quiet --no-deps -d target/gpu diffusers==0.39.0
du -sh target/gpu/*
