"""ONNX Runtime GenAI: decoder folders written by export and quantize load in ``og.Model`` with the
genai_config.json written next to the graph, generate the same greedy tokens as transformers and as a plain
ONNX Runtime loop, and their tokenizer gives ORT GenAI the same ids as transformers."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")
og = pytest.importorskip("onnxruntime_genai")

import onnx  # noqa: E402

from edgeprune.data import pydoc_text  # noqa: E402
from edgeprune.onnx import ExportConfig, QuantizeConfig, export, quantize  # noqa: E402
from edgeprune.onnx.genai import GENAI_CONFIG, gpt2_tokenizer  # noqa: E402
from edgeprune.onnx.session import OrtDecoder, session  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog because"
NEW_TOKENS = 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def genai_exports(tmp_path_factory, tiny_llama_lively_dir):
    """The lively tiny Llama exported fused (GroupQueryAttention) and with optimum's own graph, once per module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("genai")
    try:
        for fuse in (True, False):
            export(str(tiny_llama_lively_dir), root / ("fused" if fuse else "unfused"), ExportConfig(fuse=fuse, new_tokens=8))
    finally:
        torch.set_num_threads(threads)
    return {True: root / "fused", False: root / "unfused"}


def paragraphs(count: int = 6) -> list[str]:
    return [p for p in pydoc_text("eval").split("\n\n") if len(p) > 200][:count]


def og_greedy(folder, ids: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([ids], np.int32))
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def transformers_greedy(source: str, ids: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    from edgeprune.models.loading import load_model

    model = load_model(source, device="cpu", dtype=torch.float32).model
    prompt = torch.tensor([ids])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def assert_tokenizer_round_trips(folder, texts: list[str]) -> None:
    """og.Tokenizer and transformers give the same ids, with and without special tokens, and decode the text back."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)
    tokenizer = og.Tokenizer(og.Config(str(folder)))
    for text in texts:
        ids = [int(i) for i in tokenizer.encode(text)]
        assert ids == hf(text, add_special_tokens=False)["input_ids"], text[:60]
        assert tokenizer.decode(np.array(ids, np.int32)) == text
        assert hf.decode(ids) == text
    tokenizer.update_options(add_special_tokens="true")
    for text in texts:
        assert [int(i) for i in tokenizer.encode(text)] == hf(text)["input_ids"], text[:60]


# --- genai_config.json ----------------------------------------------------------------------------


@pytest.mark.parametrize("fuse", [True, False])
def test_export_writes_genai_config_from_the_graph(fuse, genai_exports, tiny_llama_lively_dir, tiny_tokenizer):
    folder = genai_exports[fuse]
    config = json.loads((folder / GENAI_CONFIG).read_text())
    model, decoder = config["model"], config["model"]["decoder"]
    # GroupQueryAttention writes into a cache sized for max_length; optimum's Concat needs its own present tensor
    assert config["search"]["past_present_share_buffer"] is fuse
    assert decoder["filename"] == "model.onnx"

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    named = {v % i if "%d" in v else v for v in decoder["inputs"].values() for i in range(decoder["num_hidden_layers"])}
    assert named == {i.name for i in graph.input}  # position_ids included exactly when the graph has it
    named = {v % i if "%d" in v else v for v in decoder["outputs"].values() for i in range(decoder["num_hidden_layers"])}
    assert named == {o.name for o in graph.output}

    hf = json.loads((tiny_llama_lively_dir / "config.json").read_text())
    assert (decoder["num_hidden_layers"], decoder["num_attention_heads"], decoder["num_key_value_heads"]) == (2, 4, 2)
    assert decoder["head_size"] == 16 and decoder["hidden_size"] == 64
    assert (model["type"], model["context_length"], model["vocab_size"]) == ("llama", 256, hf["vocab_size"])
    assert (model["bos_token_id"], model["eos_token_id"]) == (hf["bos_token_id"], hf["eos_token_id"]) == (1, 2)
    assert model["pad_token_id"] == tiny_tokenizer.pad_token_id == 3  # in neither HF config: the tokenizer's
    assert GENAI_CONFIG in json.loads((folder / "edgeprune.json").read_text())["export"]["files"]


@pytest.mark.parametrize("fuse", [True, False])
def test_genai_greedy_tokens_equal_transformers(fuse, genai_exports, tiny_llama_lively_dir, tiny_tokenizer):
    ids = tiny_tokenizer(PROMPT)["input_ids"]
    expected = transformers_greedy(str(tiny_llama_lively_dir), ids)
    assert tiny_tokenizer.eos_token_id not in expected  # ORT GenAI would stop there
    assert len(set(expected)) > 5  # a generation that moves
    assert og_greedy(genai_exports[fuse], ids) == expected


def test_genai_left_padded_batch_equals_single_prompts(genai_exports):
    """ORT GenAI left-pads a batch: with the fused graph's position_ids every row matches its own unpadded run."""
    folder = genai_exports[True]
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    prompts = [PROMPT, "Return the value"]

    def run(texts: list[str]) -> list[list[int]]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=64, do_sample=False, batch_size=len(texts))
        generator = og.Generator(model, params)
        generator.append_tokens(tokenizer.encode_batch(texts))
        out = [[] for _ in texts]
        for _ in range(8):
            generator.generate_next_token()
            for row, token in zip(out, generator.get_next_tokens()):
                row.append(int(token))
        return out

    assert run(prompts) == [run([p])[0] for p in prompts]


def test_quantized_folder_runs_in_genai_like_a_plain_ort_loop(genai_exports, tiny_tokenizer, tmp_path):
    out = tmp_path / "int4"
    quantize(genai_exports[True], out, QuantizeConfig(scheme="int4", method="rtn"), verify=False)
    config = json.loads((out / GENAI_CONFIG).read_text())
    assert config["model"]["decoder"]["filename"] == "model.onnx" and config["search"]["past_present_share_buffer"] is True
    assert "MatMulNBits" in {n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
    assert GENAI_CONFIG in json.loads((out / "edgeprune.json").read_text())["export"]["files"]

    ids = tiny_tokenizer(PROMPT)["input_ids"]
    expected = OrtDecoder(session(out / "model.onnx")).greedy(np.array([ids], np.int64), NEW_TOKENS)
    got = og_greedy(out, ids)  # ORT GenAI stops at an end token; the plain loop does not
    eos = config["model"]["eos_token_id"]
    assert got == expected[:len(got)] and (len(got) == NEW_TOKENS or got[-1] in (eos if isinstance(eos, list) else [eos]))


def test_symbolic_kv_sizes_as_the_genai_builder_writes_them_come_from_genai_config(genai_exports, tmp_path):
    """The GenAI model builder names the cache's head size ('kv_cache_dim'); edgeprune's ORT loop (eval) reads it from
    genai_config.json, and without that file says so in one line."""
    import shutil

    from edgeprune.errors import EdgepruneError

    folder = tmp_path / "builder-like"
    shutil.copytree(genai_exports[True], folder)
    model = onnx.load(str(folder / "model.onnx"))
    for value in model.graph.input:
        if value.name.startswith("past_key_values."):
            value.type.tensor_type.shape.dim[3].dim_param = "kv_cache_dim"
    onnx.save(model, str(folder / "model.onnx"))
    ids = np.array([[5, 17, 33, 90]], np.int64)
    want = OrtDecoder(session(genai_exports[True] / "model.onnx")).greedy(ids, 4)
    assert OrtDecoder(session(folder / "model.onnx")).greedy(ids, 4) == want
    from edgeprune.profiling.worker import _Feeds  # profile's measuring loop reads it the same way

    feeds = _Feeds(np, session(folder / "model.onnx"), 100, str(folder / "model.onnx"))
    assert feeds.kv_dims(feeds.past[0]) == (2, 16)
    (folder / GENAI_CONFIG).unlink()
    with pytest.raises(EdgepruneError, match="symbolic"):
        OrtDecoder(session(folder / "model.onnx"))


# --- tokenizer ------------------------------------------------------------------------------------


def test_exported_tokenizer_round_trips_in_genai(genai_exports):
    assert_tokenizer_round_trips(genai_exports[True], paragraphs())


def test_gguf_converted_tokenizer_is_resaved_so_genai_reads_it(genai_exports, tiny_tokenizer, tmp_path):
    """The shape transformers gives a GGUF "gpt2" vocabulary of a Llama model: byte-level pre-tokeniser, but a
    SentencePiece decoder and class LlamaTokenizerFast. ORT GenAI misreads it until it is re-saved."""
    from tokenizers import Tokenizer, decoders
    from transformers import AutoTokenizer, LlamaTokenizerFast

    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    steps = [decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("▁", " "), decoders.ByteLevel()]
    backend.decoder = decoders.Sequence(steps)
    LlamaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=False,
                       legacy=False).save_pretrained(tmp_path)
    (tmp_path / GENAI_CONFIG).write_text((genai_exports[True] / GENAI_CONFIG).read_text())  # og.Config needs one
    texts = paragraphs()
    before = AutoTokenizer.from_pretrained(tmp_path)
    misread = [int(i) for i in og.Tokenizer(og.Config(str(tmp_path))).encode(texts[0])]
    assert misread != before(texts[0], add_special_tokens=False)["input_ids"]

    assert gpt2_tokenizer(tmp_path) is True
    assert gpt2_tokenizer(tmp_path) is False  # already readable: left alone
    after = AutoTokenizer.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"].startswith("GPT2Tokenizer")
    for text in texts:  # transformers' ids are unchanged
        assert after(text)["input_ids"] == before(text)["input_ids"]
    assert (after.bos_token, after.eos_token, after.unk_token) == ("<s>", "</s>", "<unk>")
    assert_tokenizer_round_trips(tmp_path, texts)


@pytest.mark.slow
def test_smollm2_export_and_int4_run_in_genai(tmp_path):
    """The bundled SmolLM2 GGUF: its converted tokenizer round-trips in ORT GenAI, and both the float and the
    int4 folder generate what transformers / a plain ORT loop generate."""
    from transformers import AutoTokenizer

    fp32, int4 = tmp_path / "fp32", tmp_path / "int4"
    export("smollm2-135m", fp32, ExportConfig(verify=False))
    assert_tokenizer_round_trips(fp32, paragraphs())
    ids = AutoTokenizer.from_pretrained(fp32)(PROMPT)["input_ids"]
    assert og_greedy(fp32, ids) == transformers_greedy("smollm2-135m", ids)

    quantize(fp32, int4, QuantizeConfig(scheme="int4", method="rtn"), verify=False)
    assert_tokenizer_round_trips(int4, paragraphs(2))
    assert og_greedy(int4, ids) == OrtDecoder(session(int4 / "model.onnx")).greedy(np.array([ids], np.int64), NEW_TOKENS)
