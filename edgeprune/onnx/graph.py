"""Edits to an exported ONNX graph: append sentence pooling (mean over the attention mask,
then L2 normalisation) so one session call returns a sentence embedding."""

from __future__ import annotations

from pathlib import Path

from edgeprune.errors import EdgepruneError

POOLED_OUTPUT = "sentence_embedding"


def _has_external_data(model) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in model.graph.initializer)



def loaded_copy(tensor, base: Path):
    """A standalone copy of initializer ``tensor`` with its external data (if any) read from ``base``. Reading the
    data into the graph's own initializer would keep it: protobuf (upb) holds it in the graph's arena until the whole
    graph is freed, so reading a large graph's weights one by one that way piles them all up."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    if not uses_external_data(tensor):
        return tensor
    copy = TensorProto()  # its own arena: freed with it
    copy.CopyFrom(tensor)
    load_external_data_for_tensor(copy, str(base))
    copy.data_location = TensorProto.DEFAULT
    del copy.external_data[:]
    return copy


def tensor_array(tensor, base: Path):
    """An initializer's value as a numpy array, its external data read from ``base`` (see :func:`loaded_copy`)."""
    from onnx import numpy_helper

    return numpy_helper.to_array(loaded_copy(tensor, base))

def check_external_data(onnx_path: Path, model=None) -> dict[str, int]:
    """Every external-data file a graph names exists and is long enough; returns {file: bytes}.

    Graphs over 2 GB keep their weights next to them (optimum: ``model.onnx_data``); a missing or cut file
    is a one-line error naming it, before ONNX Runtime or onnx fail on it with a lower-level message.
    """
    import onnx

    if model is None:
        model = onnx.load(str(onnx_path), load_external_data=False)
    need: dict[str, int] = {}
    for tensor in model.graph.initializer:
        info = {e.key: e.value for e in tensor.external_data}
        if "location" in info:
            end = int(info.get("offset", 0)) + int(info.get("length", 0))
            need[info["location"]] = max(need.get(info["location"], 0), end)
    files = {}
    for name, end in need.items():
        data = onnx_path.parent / name
        if not data.is_file():
            raise EdgepruneError(f"'{onnx_path}' needs external data '{name}', which is missing", "copy the whole export folder")
        size = data.stat().st_size
        if size < end:
            raise EdgepruneError(f"external data '{data}' is truncated ({size} bytes, the graph reads up to {end})",
                                 "copy it again or re-run edgeprune export")
        files[name] = size
    return files


def add_mean_pooling(onnx_path: Path, hidden: str = "last_hidden_state", mask: str = "attention_mask") -> None:
    """Add output ``sentence_embedding`` = normalize(sum(h·mask) / max(sum(mask), 1e-9)), as sentence-transformers does.

    The eps values match ``torch.nn.functional.normalize`` (1e-12) and our PyTorch reference
    in :func:`edgeprune.evaluation.sentence_embeddings` (1e-9), so both agree on edge cases.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    external = _has_external_data(model)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # ReduceSum/Unsqueeze take axes as an input from opset 13
        raise EdgepruneError(f"pooling needs ONNX opset 13 or newer, the export used {opset}", "export with opset >= 13")
    outputs = {o.name for o in graph.output}
    if hidden not in outputs or mask not in {i.name for i in graph.input}:
        raise EdgepruneError(f"cannot add pooling: the graph has no '{hidden}' output or '{mask}' input", "export with pooling off")

    p = "/edgeprune_pooling/"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], np.int64), p + "axis_seq"),
        numpy_helper.from_array(np.array([-1], np.int64), p + "axis_last"),
        numpy_helper.from_array(np.array(1e-9, np.float32), p + "count_eps"),
        numpy_helper.from_array(np.array(1e-12, np.float32), p + "norm_eps"),
    ])
    graph.node.extend([
        helper.make_node("Cast", [mask], [p + "mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [p + "mask_f", p + "axis_last"], [p + "mask_3d"]),
        helper.make_node("Mul", [hidden, p + "mask_3d"], [p + "masked"]),
        helper.make_node("ReduceSum", [p + "masked", p + "axis_seq"], [p + "summed"], keepdims=0),
        helper.make_node("ReduceSum", [p + "mask_3d", p + "axis_seq"], [p + "count"], keepdims=0),
        helper.make_node("Max", [p + "count", p + "count_eps"], [p + "count_safe"]),
        helper.make_node("Div", [p + "summed", p + "count_safe"], [p + "mean"]),
        helper.make_node("Mul", [p + "mean", p + "mean"], [p + "squares"]),
        helper.make_node("ReduceSum", [p + "squares", p + "axis_last"], [p + "sq_norm"], keepdims=1),
        helper.make_node("Sqrt", [p + "sq_norm"], [p + "norm"]),
        helper.make_node("Max", [p + "norm", p + "norm_eps"], [p + "norm_safe"]),
        helper.make_node("Div", [p + "mean", p + "norm_safe"], [POOLED_OUTPUT]),
    ])
    hidden_size = next(o for o in graph.output if o.name == hidden).type.tensor_type.shape.dim[-1]
    graph.output.append(
        helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, ["batch_size", hidden_size.dim_value or "hidden_size"])
    )
    if external:
        data = onnx_path.name + "_data"
        (onnx_path.parent / data).unlink(missing_ok=True)
        onnx.save(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    else:
        onnx.checker.check_model(model)
        onnx.save(model, str(onnx_path))
