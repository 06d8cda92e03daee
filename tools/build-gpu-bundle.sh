#!/usr/bin/env bash
# Build tessera and its parity tests for CUDA here (no GPU needed) and pack them, with the
# diffusers wheel, into target/gpu/ for tools/gpu-check.sh on the GPU machine.
# Needs the CUDA 13.0 build toolchain from PyPI: ../shared/notes/cuda-build.md, i.e.
#   bash ../shared/tools/cuda/setup-cuda-build.sh ~/cuda-build
# Env: CUDA_BUILD (default ~/cuda-build), CARGO_TARGET_DIR (default target/cuda; keeps the CPU
# build's target/ intact), FEATURES (default cuda; `cudnn` also needs libcudnn.so in the
# toolchain's link folder: pip's nvidia-cudnn-cu13 has it), NAME (default tessera; another name
# packs only the binary, e.g. FEATURES=cudnn NAME=tessera-cudnn).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "${CUDA_BUILD:-$HOME/cuda-build}/env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
flags=(--release --features "${FEATURES:-cuda}" --config profile.release.strip=true)
NAME=${NAME:-tessera}
cargo build "${flags[@]}" --bin tessera
mkdir -p target/gpu
xz -T2 -6 -c "$CARGO_TARGET_DIR/release/tessera" >"target/gpu/$NAME.xz"
[ "$NAME" = tessera ] || { du -sh "target/gpu/$NAME.xz"; exit 0; }
tests=(gpu_parity)
mapfile -t exes < <(cargo test "${flags[@]}" --no-run "${tests[@]/#/--test=}" --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"] + " " + m["executable"])')
for e in "${exes[@]}"; do
  read -r name path <<<"$e"
  xz -T2 -6 -c "$path" >"target/gpu/$name.xz"
done
ls target/gpu/diffusers-*.whl >/dev/null 2>&1 ||
  python3 -m pip download --quiet --no-deps -d target/gpu diffusers==0.39.0
du -sh target/gpu/*
