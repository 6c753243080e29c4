"""Does an exported decoder folder run in the clients apps use? ONNX Runtime GenAI and optimum's ORTModelForCausalLM.

    python benchmarks/clients_check.py runs/demo/05-quantize --out bench-out/clients

For the folder (from `edgeprune export` or `edgeprune quantize`): og.Tokenizer ids against the folder's transformers
tokenizer on held-out pydoc paragraphs (and exact decode); 20 greedy tokens from og.Generator against a plain ONNX
Runtime loop over the same graph; optimum's batched, left-padded generate against each prompt alone. Writes OUT.json
and OUT.md and exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

PROMPTS = ["The quick brown fox jumps over the lazy dog because", "Hello", "A list in Python is"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--paragraphs", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--out", default="bench-out/clients")
    args = ap.parse_args()

    import onnxruntime_genai as og
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    from edgeprune.data import pydoc_text
    from edgeprune.onnx.session import OrtDecoder, session

    hf = AutoTokenizer.from_pretrained(args.folder)
    texts = [p for p in pydoc_text("eval").split("\n\n") if len(p) > 200][: args.paragraphs]
    og_tok = og.Tokenizer(og.Config(str(args.folder)))
    same_ids = sum(list(og_tok.encode(t)) == hf(t, add_special_tokens=False).input_ids for t in texts)
    exact_decode = sum(og_tok.decode(og_tok.encode(t)) == t for t in texts)
    tokens = sum(len(hf(t, add_special_tokens=False).input_ids) for t in texts)

    ids = hf(PROMPTS[0], add_special_tokens=False).input_ids
    model = og.Model(str(args.folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + args.tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([ids], np.int32))
    og_tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        og_tokens.append(int(generator.get_next_tokens()[0]))
    ort_tokens = OrtDecoder(session(args.folder / "model.onnx")).greedy(np.array([ids], np.int64), args.tokens)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ort_model = ORTModelForCausalLM.from_pretrained(args.folder)
    hf.padding_side = "left"
    if hf.pad_token is None:  # SmolLM2's tokenizer has none: pad with EOS, as generate() users do
        hf.pad_token = hf.eos_token
    pad = hf.pad_token_id
    batch = hf(PROMPTS, return_tensors="pt", padding=True, return_token_type_ids=False, add_special_tokens=False)
    batched = ort_model.generate(**batch, max_new_tokens=args.tokens, do_sample=False, pad_token_id=pad)
    rows = []
    for row, prompt in enumerate(PROMPTS):
        alone = hf(prompt, return_tensors="pt", return_token_type_ids=False, add_special_tokens=False)
        single = ort_model.generate(**alone, max_new_tokens=args.tokens, do_sample=False, pad_token_id=pad)
        rows.append(batched[row, batch.input_ids.shape[1]:].tolist() == single[0, alone.input_ids.shape[1]:].tolist())

    result = {
        "folder": str(args.folder),
        "genai_tokenizer": {"paragraphs": len(texts), "tokens": tokens, "same_ids": same_ids, "exact_decode": exact_decode},
        "genai_greedy": {"tokens": args.tokens, "identical_to_plain_ort": og_tokens == ort_tokens,
                         "identical_prefix": next((i for i, (a, b) in enumerate(zip(og_tokens, ort_tokens)) if a != b), len(og_tokens))},
        "optimum_left_padded": {"pad_tokens_per_row": (batch.attention_mask == 0).sum(-1).tolist(), "rows_equal_alone": rows,
                                "legacy_warning": any("legacy" in str(w.message).lower() for w in caught)},
    }
    ok = (same_ids == exact_decode == len(texts) and result["genai_greedy"]["identical_to_plain_ort"] and all(rows)
          and not result["optimum_left_padded"]["legacy_warning"])
    result["ok"] = ok
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Clients check: `{args.folder}`", "",
             f"- ORT GenAI tokenizer: {same_ids}/{len(texts)} paragraphs ({tokens:,} tokens) with transformers' ids, "
             f"{exact_decode}/{len(texts)} decoded exactly",
             f"- ORT GenAI greedy: {args.tokens} tokens identical to a plain ORT loop: {og_tokens == ort_tokens}",
             f"- optimum ORTModelForCausalLM, left-padded batch (pads per row {result['optimum_left_padded']['pad_tokens_per_row']}): "
             f"rows equal to each prompt alone {rows}; legacy warning: {result['optimum_left_padded']['legacy_warning']}", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
