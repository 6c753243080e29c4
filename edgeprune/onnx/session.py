"""ONNX Runtime sessions, shared by verification, evaluation and the mobile format: a CPU session with the caller's
thread budget, a loader that turns a missing or corrupt file into a one-line error, and greedy decoding over
optimum's merged decoder graph. A leaf: it imports nothing from edgeprune above the graph helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgeprune.errors import EdgepruneError


def session(path: Path, prepack: bool = True):
    """An ORT CPU session with as many threads as torch uses (the caller's budget, not every core).

    ``prepack=False`` for one-off checks next to a loaded PyTorch model: ORT then leaves the weights as stored instead
    of copying them into its GEMM layout (an fp32 1B graph: 5.67 GiB peak with pre-packing, 0.10 GiB without)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_session(path: Path):
    """An ORT session for ``path`` (.onnx or .ort); a missing, truncated or invalid file is a one-line error."""
    if not path.is_file():
        there = sorted(p.name for p in path.parent.glob("*.onnx")) if path.parent.is_dir() else []
        raise EdgepruneError(f"ONNX file '{path}' not found", f"choose one of: {', '.join(there)}" if there else "run edgeprune export first")
    if path.suffix == ".onnx":
        from edgeprune.onnx.graph import check_external_data

        try:
            check_external_data(path)
        except EdgepruneError:
            raise
        except Exception:  # not readable by onnx: ORT's message below names the problem
            pass
    try:
        return session(path)
    except Exception as exc:  # ORT raises Fail / InvalidProtobuf / InvalidGraph / NoSuchFile; the user needs the file and cause
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgepruneError(f"cannot load ONNX model '{path}': {first[:200].rstrip('.')}", "the file is truncated or corrupt; re-run edgeprune export") from None


class OrtDecoder:
    """Greedy decoding over optimum's merged decoder graph (one model.onnx for prefill and decode)."""

    def __init__(self, sess):
        self.sess = sess
        self.past_names = [i.name for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.input_names = {i.name for i in sess.get_inputs()}
        first = next(i for i in sess.get_inputs() if i.name.startswith("past_key_values."))
        self.kv_heads, self.head_dim = first.shape[1], first.shape[3]
        if not (isinstance(self.kv_heads, int) and isinstance(self.head_dim, int)):  # named, as the GenAI builder writes them
            config = Path(getattr(sess, "_model_path", "") or ".").parent / "genai_config.json"
            if not config.is_file():
                raise EdgepruneError(f"the graph's KV cache sizes are symbolic ({first.shape}) and there is no {config.name} next to it",
                                     "export with edgeprune export, or add the GenAI config the builder wrote")
            decoder = json.loads(config.read_text())["model"]["decoder"]
            self.kv_heads = self.kv_heads if isinstance(self.kv_heads, int) else decoder["num_key_value_heads"]
            self.head_dim = self.head_dim if isinstance(self.head_dim, int) else decoder["head_size"]
        self.kv_dtype = np.float16 if "float16" in first.type else np.float32
        self.output_names = [o.name for o in sess.get_outputs()]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), self.kv_dtype) for n in self.past_names}

    def step(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict, dict]:
        """Run ids (new tokens only) given the cache; returns (logits, new cache, all outputs by name)."""
        past_len = mask.shape[1] - ids.shape[1]
        feeds = {"input_ids": ids, "attention_mask": mask, **past}
        if "position_ids" in self.input_names:  # from the mask, as transformers counts them: left padding shifts a row's positions
            feeds["position_ids"] = np.maximum(np.cumsum(mask, axis=1, dtype=np.int64) - 1, 0)[:, past_len:]
        outputs = dict(zip(self.output_names, self.sess.run(None, feeds)))
        new_past = {n: outputs[n.replace("past_key_values.", "present.")] for n in self.past_names}
        return outputs["logits"], new_past, outputs

    def greedy(self, ids: np.ndarray, new_tokens: int) -> list[int]:
        mask = np.ones_like(ids)
        logits, past, _ = self.step(ids, mask, self.empty_past(ids.shape[0]))
        tokens = []
        for _ in range(new_tokens):
            nxt = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
            tokens.append(int(nxt[0, 0]))
            mask = np.concatenate([mask, np.ones_like(nxt)], axis=1)
            logits, past, _ = self.step(nxt, mask, past)
        return tokens
