"""Tiny models built in-process from configs, with a tokenizer trained on the embedded corpus. Offline."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_REPO = Path(__file__).resolve().parents[1]


def _untracked() -> set[str]:
    """Files in the checkout that git neither tracks nor ignores."""
    try:
        out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=_REPO, capture_output=True, text=True,
                             timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return set(out)


@pytest.fixture(autouse=True)
def no_files_left_behind():
    """Fail any test that leaves files in the checkout behind (tmp_path is the place for outputs)."""
    before = _untracked()
    yield
    left = _untracked() - before
    assert not left, f"the test left files behind: {sorted(left)[:5]}"


@pytest.fixture(autouse=True, scope="session")
def edgeprune_cache(tmp_path_factory):
    """Self-generated text is cached in a folder of the test session, never in the user's ~/.cache."""
    path = tmp_path_factory.mktemp("edgeprune-cache")
    before = os.environ.get("EDGEPRUNE_CACHE_DIR")
    os.environ["EDGEPRUNE_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("EDGEPRUNE_CACHE_DIR", None)
    else:
        os.environ["EDGEPRUNE_CACHE_DIR"] = before


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread for the test (exports and ORT sessions follow torch's count), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from edgeprune.data import pydoc_text

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False)
    tok.train_from_iterator([pydoc_text("calib")[:200_000]], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _train_tokenizer()


def make_tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, attn_implementation="sdpa",
    )
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def make_tiny_qwen2(vocab_size: int, seed: int = 0, **overrides):
    """A tiny Qwen2: q/k/v projections with biases, drawn non-zero so that a lost bias shows in the outputs."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(Qwen2Config(**(cfg | overrides))).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(std=0.5)
    return model


def make_tiny_smollm3(vocab_size: int, seed: int = 0, **overrides):
    """A tiny SmolLM3 whose layers 1 and 3 skip RoPE (``no_rope_layers``; the real model skips it in every 4th)."""
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, attn_implementation="sdpa",
        no_rope_layers=[1, 0, 1, 0], pad_token_id=3, bos_token_id=1, eos_token_id=2,
    )
    return SmolLM3ForCausalLM(SmolLM3Config(**(cfg | overrides))).eval()


def assert_attention_is_the_models(model, ids: torch.Tensor) -> None:
    """Every block's ``attention_probs`` (from the adapter's parts) equals the eager attention weights the model returns."""
    from edgeprune.models import get_adapter
    from edgeprune.pruning.attention_math import attention_probs

    adapter = get_adapter(model)
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True, use_cache=False)
        _, context = adapter.embed(model, ids)
        for i, block in enumerate(adapter.blocks(model)):
            parts = adapter.attention(block)
            probs = attention_probs(parts.attn_input(out.hidden_states[i]), parts, context)
            assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
            assert probs.shape == out.attentions[i].shape, f"block {i}"
            assert torch.allclose(probs, out.attentions[i], atol=1e-5), f"block {i}: max diff {(probs - out.attentions[i]).abs().max():.3g}"


def make_tiny_bert(vocab_size: int, seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, attn_implementation="sdpa",
    )
    return BertModel(cfg).eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-bert")
    make_tiny_bert(len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_lively_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama with larger random weights, so greedy generation varies from token to token
    (at the default init scale it repeats one token, which would make token-identity tests weak)."""
    path = tmp_path_factory.mktemp("tiny-llama-lively")
    make_tiny_llama(len(tiny_tokenizer), initializer_range=0.2).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_llama_dir, tiny_bert_dir):
    """Tiny Llama (merged decoder with KV cache) and tiny BERT, exported once per session."""
    import torch

    from edgeprune.onnx import ExportConfig, export

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("profiling-onnx")
    try:
        export(str(tiny_llama_dir), root / "llama", ExportConfig(verify=False))
        export(str(tiny_bert_dir), root / "bert", ExportConfig(verify=False))
    finally:
        torch.set_num_threads(threads)
    return root / "llama", root / "bert"


def error_line(result) -> str:
    """The single ``error: ...`` line a failed CLI call must print on stderr."""
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def no_leftovers(parent, name="out"):
    """Neither the output nor a temporary sibling of it was left behind."""
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, tiny_tokenizer):
    """An architecture edgeprune does not support."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tiny_tokenizer))).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def terminal_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT as Ctrl-C would: a shell that starts jobs in the
    background hands them SIGINT ignored, and the child would inherit that; restore the default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
