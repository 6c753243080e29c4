"""Turn a user's model spec (folder, .gguf file, Hub id or bundled alias; see :mod:`edgeprune.specs`) into a model +
tokenizer, or into a weightless skeleton for the checks that need only the architecture."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.errors import EdgepruneError
from edgeprune.models.base import Adapter
from edgeprune.models.registry import adapter_for_model_type
from edgeprune.progress import status
from edgeprune.specs import BUNDLED, BundledModel, bundled_path, hub_kwargs, resolve_spec  # noqa: F401  (re-exported)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    adapter: Adapter
    source: str  # what the user asked for
    path: Path | None  # folder or .gguf file it came from (None for the Hub)
    gguf_file: str | None = None

    @property
    def is_decoder(self) -> bool:
        return self.adapter.task == "text-generation"


@functools.lru_cache(maxsize=4)
def _gguf_config_cached(path: str, gguf_file: str, mtime_ns: int):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, gguf_file=gguf_file)


def _gguf_config(path: str, gguf_file: str, mtime_ns: int):
    """A GGUF file's config (parsing its metadata takes seconds: read once per process, checks and load share it)."""
    import copy

    return copy.deepcopy(_gguf_config_cached(path, gguf_file, mtime_ns))


def _read_config(kind: str, path: Path | None, gguf_file: str | None, source: str):
    """The model's config: its model_type, and the transformers config object (None for a plain folder, read as JSON)."""
    if kind == "folder":
        try:
            return json.loads((path / "config.json").read_text())["model_type"], None
        except (KeyError, ValueError) as exc:
            raise EdgepruneError(f"{path / 'config.json'} is not a valid model config ({exc})", "re-save the model") from None
    from transformers import AutoConfig

    try:
        if kind == "gguf":
            config = _gguf_config(str(path), gguf_file, (path / gguf_file).stat().st_mtime_ns)
        else:
            config = AutoConfig.from_pretrained(source, **hub_kwargs(source))
        return config.model_type, config
    except OSError as exc:
        if kind == "hub":
            raise EdgepruneError(
                f"cannot fetch '{source}' from the Hugging Face Hub (unknown id, or no access)",
                "download it first and pass the local folder, or use a bundled alias: " + ", ".join(BUNDLED),
            ) from None
        raise EdgepruneError(f"cannot read model '{source}': {str(exc).splitlines()[0]}", "check the file") from None
    except ValueError as exc:
        # transformers raises ValueError for GGUF architectures it cannot map.
        raise EdgepruneError(f"cannot load '{source}': {str(exc).splitlines()[0]}", "use a supported GGUF or HF folder") from None


def model_skeleton(spec: str | os.PathLike) -> tuple[torch.nn.Module, Adapter] | None:
    """The model's modules on the meta device (shapes, no weights) and its adapter, so checks that need only the
    architecture (supported? N:M widths?) run before the weights load. None for folders whose blocks differ in size."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    kind, path, gguf_file = resolve_spec(spec)
    model_type, config = _read_config(kind, path, gguf_file, str(spec))
    adapter = adapter_for_model_type(model_type)
    if kind == "folder" and is_structured(path):
        return None
    if config is None:
        config = AutoConfig.from_pretrained(path)
    cls = AutoModelForCausalLM if adapter.task == "text-generation" else AutoModel
    with torch.device("meta"):
        return cls.from_config(config), adapter


@contextlib.contextmanager
def _quiet_transformers():
    """No GGUF de-quantisation progress bar and no tokenizer 'legacy behaviour' notice on every load; errors still show."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils  # its bar is plain tqdm, outside hf_logging
    except ImportError:
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


GGUF_CACHE = "gguf"  # under edgeprune.io.cache_dir()
_GGUF_CACHE_FORMAT = 2  # bump when what is written changes: older folders are then ignored (2: one shard per block)


def _gguf_cache_path(path: Path, gguf_file: str) -> Path:
    """The converted folder of one GGUF file, keyed by its path, size and mtime and by the transformers version that
    de-quantised it (a newer converter may map the file differently)."""
    import hashlib

    import transformers

    from edgeprune.io import cache_dir

    file = (path / gguf_file).resolve()
    st = file.stat()
    key = f"{file}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}|{_GGUF_CACHE_FORMAT}"
    return cache_dir() / GGUF_CACHE / f"{file.stem}-{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}"


def _convert_gguf(file: Path, model_cls, out: Path) -> None:
    """Write ``file``'s weights to ``out`` as an fp32 safetensors folder (one shard per block, one for the rest, and the
    index) with its config, de-quantising one tensor at a time with transformers' own GGUF name map and tensor
    processors (q/k un-permuted as it does), so memory holds one tensor and one block, not the model (transformers'
    loader de-quantises every tensor into memory first)."""
    import re

    import numpy as np
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map, read_field

    from edgeprune.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    config = _gguf_config(str(file.parent), file.name, file.stat().st_mtime_ns)  # parsed once per process
    config.torch_dtype = torch.float32
    parsed = {"config": config.to_dict()}  # what the tensor processors read (head counts, for un-permuting q/k)
    with torch.device("meta"):
        skeleton = model_cls.from_config(config)
    names = get_gguf_hf_weights_map(skeleton)
    config.architectures = [type(skeleton).__name__]  # as save_pretrained writes it
    reader = GGUFReader(str(file))
    processor = TENSOR_PROCESSORS.get(read_field(reader, "general.architecture")[0], TensorProcessor)(config=parsed["config"])
    layer = re.compile(r"\.layers\.(\d+)\.")
    shards: dict[str, dict[str, torch.Tensor]] = {}
    written: dict[str, int] = {}  # shard key → files written for it (a block whose tensors come back later gets another)
    weight_map, total = {}, 0

    def flush(key: str) -> None:
        nonlocal total
        tensors = shards.pop(key)
        written[key] = written.get(key, 0) + 1
        shard = f"model-{key}{'' if written[key] == 1 else f'-{written[key]}'}.safetensors"
        save_file(tensors, out / shard, metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = shard
            total += t.numel() * t.element_size()

    for tensor in reader.tensors:
        result = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name,
                                   tensor_key_mapping=names, parsed_parameters=parsed)
        if result.name not in names:
            continue
        name = names[result.name]
        found = layer.search(name)
        key = f"block{int(found.group(1)):05d}" if found else re.sub(r"[^A-Za-z0-9_]+", "_", name)  # stem tensors: one file each
        shards.setdefault(key, {})[name] = torch.from_numpy(np.array(result.weights, dtype=np.float32))  # a copy: not the mmap
        for done in [k for k in shards if k != key or not found]:  # blocks come in order: the one before is complete
            flush(done)
    for key in list(shards):
        flush(key)
    write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    config.save_pretrained(out)


def gguf_as_folder(path: Path, gguf_file: str, model_cls) -> Path | None:
    """A GGUF file as an fp32 Hugging Face folder (safetensors + tokenizer), converted once and cached.

    transformers parses and de-quantises a GGUF on every load (45 s for SmolLM2-135M here, most of it reading the
    tokenizer's metadata), and one pipeline loads the same file several times; the folder loads in seconds with the
    same weights, config and tokenizer. The conversion reads one tensor at a time (:func:`_convert_gguf`), so a GGUF
    larger than memory converts too, and then streams block by block like any safetensors folder. None when the cache
    cannot be written (then the GGUF loads directly)."""
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    target = _gguf_cache_path(path, gguf_file)
    if (target / "config.json").is_file():
        return target
    status(f"converting {gguf_file} once to a cached folder ({target.parent})")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError:
        return None
    try:
        with _quiet_transformers():
            _convert_gguf(path / gguf_file, model_cls, tmp)
            AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file).save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first: keep theirs
            if not (target / "config.json").is_file():
                raise
    except OSError:
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_structured(folder: Path | None) -> bool:
    """A folder written by ``edgeprune structured`` (blocks of different sizes, see edgeprune/structured/layout.py)."""
    from edgeprune.structured.layout import LAYOUT_KEY

    try:
        return folder is not None and LAYOUT_KEY in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def load_model(spec: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model for pruning or evaluation: a folder, a .gguf file, a Hub id, or a bundled alias."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    source = str(spec)
    kind, path, gguf_file = resolve_spec(spec)
    adapter = adapter_for_model_type(_read_config(kind, path, gguf_file, source)[0])
    model_cls = AutoModelForCausalLM if adapter.task == "text-generation" else AutoModel
    where = source if kind == "hub" else str(path)
    extra = {"gguf_file": gguf_file} if gguf_file else hub_kwargs(source) if kind == "hub" else {}
    if kind == "gguf":
        converted = gguf_as_folder(path, gguf_file, model_cls)
        if converted is not None:
            where, extra = str(converted), {}
    status(f"loading {source}")
    if kind == "folder" and is_structured(path):
        extra["trust_remote_code"] = True  # per-block sizes: the folder's modeling_edgeprune.py (edgeprune's own code)
    try:
        with _quiet_transformers():
            model = model_cls.from_pretrained(where, dtype=dtype, attn_implementation="sdpa", **extra)
            tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    except OSError as exc:
        raise EdgepruneError(f"cannot load model '{source}': {str(exc).splitlines()[0]}", "check the path or id") from None
    if kind == "gguf":
        model.config._name_or_path = str(path)  # where it came from, not the cache folder
    model.eval().to(device)
    return LoadedModel(model, tokenizer, adapter, source, path, gguf_file)


def stream_source(spec: str | os.PathLike) -> Path | None:
    """The safetensors folder a model can be streamed from (a folder, or a GGUF's converted cache), else None."""
    kind, path, gguf_file = resolve_spec(spec)
    if kind == "gguf":
        from transformers import AutoModel, AutoModelForCausalLM

        adapter = adapter_for_model_type(_read_config(kind, path, gguf_file, str(spec))[0])
        path = gguf_as_folder(path, gguf_file, AutoModelForCausalLM if adapter.task == "text-generation" else AutoModel)
    elif kind != "folder":
        return None
    from edgeprune.models.streaming import Checkpoint

    return path if Checkpoint.available(path) and not is_structured(path) else None


def load_streamed(spec: str | os.PathLike, device: str = "cpu", storage: torch.dtype | None = None):
    """The model on the meta device with its tokenizer, and a :class:`~edgeprune.models.streaming.StreamedModel` that
    reads its blocks from the safetensors one at a time (storage dtype: ``storage``, or the checkpoint's)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from edgeprune.models.streaming import Checkpoint, StreamedModel, meta_model

    source = str(spec)
    kind, path, gguf_file = resolve_spec(spec)
    folder = stream_source(spec)
    if folder is None:
        raise EdgepruneError(f"'{source}' cannot be streamed: it is not a folder of safetensors weights with equal blocks",
                             "download it to a folder first, or pass --stream off to load it whole")
    adapter = adapter_for_model_type(_read_config("folder", folder, None, source)[0])
    model_cls = AutoModelForCausalLM if adapter.task == "text-generation" else AutoModel
    status(f"reading {source} block by block")
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as exc:
        raise EdgepruneError(f"cannot load model '{source}': {str(exc).splitlines()[0]}", "check the path") from None
    model = meta_model(config, model_cls)
    checkpoint = Checkpoint(folder)
    loaded = LoadedModel(model, tokenizer, adapter, source, path, gguf_file)
    return loaded, StreamedModel(model, adapter, checkpoint, device, storage or checkpoint.storage_dtype())
