#!/usr/bin/env bash
# Download, here, the wheels that a GPU host without network lacks, into .whl/ (git-ignored), at the versions
# pinned in constraints.txt. The host's own torch, transformers, huggingface_hub, tokenizers, accelerate and peft
# are kept (carrying newer ones would have to satisfy their import-time version checks there too).
# Then run bench/gpu.sh there with .whl carried along.
set -euo pipefail
cd "$(dirname "$0")/.."
# bitsandbytes (43 MB) and torchao: the quantized-base LoRA steps (`--base-quantization`); ~55 MB in all
pkgs=(diffusers datasets dill multiprocess open_clip_torch ftfy wcwidth bitsandbytes torchao)
pins=()
for p in "${pkgs[@]}"; do
  pin=$(grep -i "^${p//_/[-_]}==" constraints.txt) || { echo "constraints.txt has no pin for $p" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
ls .whl
