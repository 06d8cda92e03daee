#!/usr/bin/env bash
# PyTorch and tessera one after the other on the same synthetic full-size model, on this
# machine, with ratios. Python torch + diffusers live in a venv this script creates (outside
# the crate's build).
#
#   tools/bench-vs-torch.sh [--arch sd15] [--latent 64] [--repeat 3]
#
# Env: TESSERA_BENCH_DIR (default ~/.cache/tessera-bench): the venv and the model folder.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=sd15 latent=64 repeat=3
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --latent) latent=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
dir=${TESSERA_BENCH_DIR:-$HOME/.cache/tessera-bench}
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet torch diffusers transformers safetensors
fi
cargo build --release --quiet
bin=target/release/tessera
model="$dir/$arch-synth"
[ -d "$model" ] || "$bin" model synth --arch "$arch" --out "$model"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores;" \
  "flags: $(grep -o -m1 -w -E 'avx512f|avx512_bf16|amx_tile|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
"$bin" bench kernels 2>/dev/null | head -1 || true

torch_out=$("$dir/venv/bin/python" tools/torch_bench.py "$model" --latent "$latent" --repeat "$repeat")
echo "$torch_out" | sed 's/^/torch   /'
figure() { echo "$torch_out" | awk -v w="$1" '$1 == w {print $2}'; }
tessera_time() { "$@" | awk '/mean/ {for (i = 1; i <= NF; i++) if ($i == "min") print $(i + 1)}'; }

t_unet=$(tessera_time "$bin" bench unet --model "$model" --batch 2 --latent "$latent" --repeat "$repeat")
t_unet16=$(tessera_time "$bin" bench unet --model "$model" --batch 2 --latent "$latent" --repeat "$repeat" --dtype bf16)
t_vae=$(tessera_time "$bin" bench vae-decode --model "$model" --latent "$latent" --repeat "$repeat")
t_vae_tiled=$(tessera_time "$bin" bench vae-decode --model "$model" --latent "$latent" --repeat "$repeat" --tile 256)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
printf '%-40s %10s %10s %8s\n' work torch tessera ratio
printf '%-40s %10s %10s %8s\n' "UNet CFG step, f32" "$(figure unet-f32)" "$t_unet" "$(ratio "$t_unet" "$(figure unet-f32)")"
printf '%-40s %10s %10s %8s\n' "UNet CFG step, bf16" "$(figure unet-bf16)" "$t_unet16" "$(ratio "$t_unet16" "$(figure unet-bf16)")"
printf '%-40s %10s %10s %8s\n' "VAE decode, one piece" "$(figure vae-f32)" "$t_vae" "$(ratio "$t_vae" "$(figure vae-f32)")"
printf '%-40s %10s %10s %8s\n' "VAE decode, 256 px tiles" "$(figure vae-f32)" "$t_vae_tiled" "$(ratio "$t_vae_tiled" "$(figure vae-f32)")"
printf '%-40s %10s %10s %8s\n' "tiled / one-piece (tessera)" "" "" "$(ratio "$t_vae_tiled" "$t_vae")"
echo "bf16: tessera multiplies in bf16 where the CPU has AVX512_BF16, else computes in f32 from"
echo "bf16 weights; its note says which: $("$bin" bench unet --model "$model" --latent 8 --repeat 1 \
  --dtype bf16 2>&1 | sed -n 's/.*\(note: .*\)); RSS.*/\1/p' | head -1)"
