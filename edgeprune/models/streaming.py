"""Models larger than memory: read a safetensors checkpoint one block at a time, write the result the same way.

The model is built on the meta device (shapes only; buffers such as rotary frequencies are real). Before a block is
computed its tensors are read from the checkpoint in fp32; when it is done they are written to the output in the
storage dtype and the block goes back to the meta device. Peak memory is then about one block in fp32 (twice, for
methods that keep a dense copy) plus the embedding while calibration ids are embedded, whatever the model's size.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import EdgepruneError

STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in STORAGE_DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PROGRESS = "edgeprune-progress.pt"  # in a streamed run's partial folder: where it stopped (removed when done)


def parse_storage_dtype(name: str) -> torch.dtype | None:
    """``--dtype``: None for auto (keep the checkpoint's), else the torch dtype; a one-line error for anything else."""
    key = str(name).strip().lower()
    if key == "auto":
        return None
    if key not in STORAGE_DTYPES:
        raise EdgepruneError(f"unknown --dtype '{name}'", "use auto, fp32, bf16 or fp16")
    return STORAGE_DTYPES[key]


class Checkpoint:
    """The tensors of a safetensors folder (one file or an index of shards), read by name, one at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: self.folder / file for name, file in weight_map.items()}
        elif (self.folder / SINGLE).is_file():
            from safetensors import safe_open

            with safe_open(self.folder / SINGLE, framework="pt") as fh:
                self.files = {name: self.folder / SINGLE for name in fh.keys()}
        else:
            raise EdgepruneError(f"'{folder}' has no safetensors weights to stream", "re-save it with save_pretrained "
                                 "(safe_serialization=True), or pass --stream off to load it whole")

    @staticmethod
    def available(folder: Path | None) -> bool:
        return folder is not None and folder.is_dir() and ((folder / INDEX).is_file() or (folder / SINGLE).is_file())

    def key(self, name: str, prefix: str) -> str | None:
        """The checkpoint's name for a module tensor ``name``: as is, or with/without the base model's prefix."""
        if name in self.files:
            return name
        if prefix and f"{prefix}.{name}" in self.files:
            return f"{prefix}.{name}"
        if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in self.files:
            return name[len(prefix) + 1 :]
        return None

    def read(self, names: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Tensors by checkpoint name; floating ones cast to ``dtype`` when given. Each shard is opened once."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for file, group in by_file.items():
            with safe_open(file, framework="pt") as fh:
                for name in group:
                    t = fh.get_tensor(name)
                    out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out

    def storage_dtype(self) -> torch.dtype:
        """The dtype most of the checkpoint's floating-point bytes are stored in."""
        from safetensors import safe_open

        sizes: dict[str, int] = {}
        for file in sorted(set(self.files.values())):
            with safe_open(file, framework="pt") as fh:
                for name in fh.keys():
                    sl = fh.get_slice(name)
                    n = 1
                    for d in sl.get_shape():
                        n *= d
                    sizes[sl.get_dtype()] = sizes.get(sl.get_dtype(), 0) + n
        floats = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
        present = {k: v for k, v in sizes.items() if k in floats}
        return floats[max(present, key=present.get)] if present else torch.float32

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in set(self.files.values()))


def model_dtype(folder: Path | None) -> torch.dtype:
    """The dtype a model's weights are stored in: a safetensors folder's, else fp32 (GGUF is converted to fp32)."""
    return Checkpoint(folder).storage_dtype() if Checkpoint.available(folder) else torch.float32


def meta_model(config, model_cls) -> nn.Module:
    """The model's modules with parameters on the meta device and buffers (rotary frequencies, ids) real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = model_cls.from_config(config)
    return model.eval()


def _set_param(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = root.get_submodule(module_name) if module_name else root
    old = module._parameters.get(attr)
    if old is None and attr in module._buffers:
        module._buffers[attr] = tensor
        return
    module._parameters[attr] = nn.Parameter(tensor, requires_grad=bool(old is not None and old.requires_grad))


def release(module: nn.Module) -> None:
    """Give a module's parameters back: they become meta tensors of the same shape (the memory is freed)."""
    for sub in module.modules():
        for attr, p in list(sub._parameters.items()):
            if p is not None and p.device.type != "meta":
                sub._parameters[attr] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad)


class _Rows:
    """Rows of one checkpoint tensor, read (in fp32) only when sliced."""

    def __init__(self, piece):
        self.piece, self.shape = piece, tuple(piece.get_shape())

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self.piece[rows].float()


class StreamedModel:
    """A meta-device model whose blocks are read from ``checkpoint`` on demand and written to ``out`` when done.

    ``embedding()`` and ``block()`` are the two context managers the pruning engine enters; everything else in the
    checkpoint (embeddings, final norm, head) is copied to the output tensor by tensor in :meth:`finish`.
    """

    def __init__(self, model: nn.Module, adapter, checkpoint: Checkpoint, device: str, storage: torch.dtype):
        self.model, self.adapter, self.checkpoint = model, adapter, checkpoint
        self.device, self.storage = device, storage
        self.prefix = getattr(model, "base_model_prefix", "") or ""
        self.n_blocks = len(adapter.blocks(model))
        self.out: Path | None = None
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.written: set[str] = set()
        self.resumed: dict | None = None  # set by resume(): where a stopped run left off
        self.key = ""  # what the output depends on; a partial folder of other settings is not resumed
        self.state = lambda: {}  # the client's records to keep with the progress (the engine sets it)
        for module in model.modules():  # buffers (rotary frequencies) are real: they go where the blocks compute
            for attr, buf in module._buffers.items():
                if buf is not None and buf.device.type != "meta":
                    module._buffers[attr] = buf.to(device)

    # --- reading -----------------------------------------------------------------------------------------------
    def _materialise(self, names: list[str], where: nn.Module, strip: str = "") -> None:
        """Read ``names`` (module names under ``where``, full names start with ``strip``) in fp32 onto the device."""
        keys = {}
        for name in names:
            key = self.checkpoint.key(strip + name, self.prefix)
            if key is None:
                raise EdgepruneError(f"'{strip + name}' is not in {self.checkpoint.folder}'s safetensors",
                                     "pass --stream off to load the model whole (transformers maps renamed weights)")
            keys[name] = key
        tensors = self.checkpoint.read(list(keys.values()), torch.float32)
        for name, key in keys.items():
            _set_param(where, name, tensors.pop(key).to(self.device))

    def _stem_names(self) -> list[str]:
        """Parameters outside the blocks and the output head: what embedding calibration ids reads."""
        block_prefixes = tuple(self.adapter.block_prefix(self.model, i) + "." for i in range(self.n_blocks))
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        head_names = tuple(n + "." for n, m in self.model.named_modules() if head is not None and m is head)
        return [n for n, _ in self.model.named_parameters(remove_duplicate=False)
                if not n.startswith(block_prefixes) and not (head_names and n.startswith(head_names))]

    @contextlib.contextmanager
    def embedding(self):
        """The embedding (and other stem weights) in memory while calibration ids are embedded."""
        self._materialise(self._stem_names(), self.model)
        try:
            yield
        finally:
            for name in self._stem_names():
                module_name, _, attr = name.rpartition(".")
                module = self.model.get_submodule(module_name) if module_name else self.model
                p = module._parameters.get(attr)
                if p is not None and p.device.type != "meta":
                    module._parameters[attr] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad)

    @contextlib.contextmanager
    def block(self, index: int, block: nn.Module):
        """Block ``index`` in memory (fp32) for the duration; on a clean exit it is written out, then released."""
        prefix = self.adapter.block_prefix(self.model, index) + "."
        names = [n for n, _ in block.named_parameters()]
        buffers = [n for n in block.state_dict() if n not in set(names)]
        self._materialise(names + [b for b in buffers if self.checkpoint.key(prefix + b, self.prefix)], block, prefix)
        try:
            yield block
            if self.out is not None:
                self._write_shard(index, {prefix + k: v for k, v in block.state_dict().items()})
        finally:
            release(block)

    def read_weight(self, module_name: str, attr: str = "weight") -> torch.Tensor:
        """One parameter of a module, by module name, in fp32 from the checkpoint (not held by the model)."""
        key = self.checkpoint.key(f"{module_name}.{attr}", self.prefix)
        if key is None:
            raise KeyError(f"{module_name}.{attr}")
        return self.checkpoint.read([key], torch.float32)[key]

    def _head_names(self) -> tuple[str, str]:
        """(the head module's name, the module whose weight it reads: itself, or for a tied head the token embedding)."""
        model = self.model
        head = model.get_output_embeddings()
        name = next(n for n, m in model.named_modules() if m is head)
        if self.checkpoint.key(name + ".weight", self.prefix) is not None:
            return name, name
        embedding = model.get_input_embeddings()
        return name, next(n for n, m in model.named_modules() if m is embedding)

    def read_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output head's weight (a tied head: the token embedding's) and bias, in fp32 from the checkpoint."""
        name, source = self._head_names()
        bias = self.read_weight(name, "bias") if getattr(self.model.get_output_embeddings(), "bias", None) is not None else None
        return self.read_weight(source), bias

    @contextlib.contextmanager
    def head_rows(self):
        """The output head's weight as a table read on demand: ``table[a:b]`` reads those rows from the checkpoint in
        fp32, ``table.shape`` is its shape (a 1B's tied head: 1 GB in fp32, never whole in memory this way)."""
        from safetensors import safe_open

        key = self.checkpoint.key(self._head_names()[1] + ".weight", self.prefix)
        with safe_open(self.checkpoint.files[key], framework="pt") as fh:
            yield _Rows(fh.get_slice(key))


    # --- writing -----------------------------------------------------------------------------------------------
    def _shard_name(self, index: int) -> str:
        return f"model-{index + 1:05d}-of-{self.n_blocks + 1:05d}.safetensors"

    def _write_shard(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        out = {}
        for name, t in tensors.items():
            key = self.checkpoint.key(name, self.prefix) or name  # keep the checkpoint's naming
            t = t.detach().to("cpu")
            out[key] = (t.to(self.storage) if t.is_floating_point() else t).contiguous()
        file = self._shard_name(index)
        tmp = self.out / f".{file}.tmp"
        save_file(out, tmp, metadata={"format": "pt"})
        os.replace(tmp, self.out / file)
        for key, t in out.items():
            self.weight_map[key] = file
            self.total_size += t.numel() * t.element_size()
            self.written.add(key)

    def save_progress(self, next_block: int, hidden, context, generator: torch.Generator) -> None:
        """After each written block: what a re-run needs to go on from ``next_block`` exactly as if never stopped."""
        if self.out is None:
            return
        tmp = self.out / f".{PROGRESS}.tmp"
        torch.save({"key": self.key, "next_block": next_block, "hidden": hidden, "context": context,
                    "generator": generator.get_state(), "state": self.state(), "weight_map": self.weight_map,
                    "total_size": self.total_size}, tmp)
        os.replace(tmp, self.out / PROGRESS)

    def resume(self, folder: Path) -> int:
        """Adopt a partial output folder left by a stopped run with the same key. Returns the next block to prune
        (0: nothing to resume; the folder is then emptied)."""
        self.out = folder
        progress = folder / PROGRESS
        saved = None
        if progress.is_file():
            try:
                saved = torch.load(progress, weights_only=False, mmap=True)  # the hidden states stay on disk
            except Exception:  # a progress file from a crash mid-write or another version: start over
                saved = None
        if saved is None or saved.get("key") != self.key or not all((folder / f).is_file() for f in set(saved["weight_map"].values())):
            for item in folder.iterdir():
                item.unlink() if item.is_file() else None
            return 0
        self.resumed = saved
        self.weight_map, self.total_size = dict(saved["weight_map"]), saved["total_size"]
        self.written = set(self.weight_map)
        return saved["next_block"]

    def finish(self) -> None:
        """Copy every tensor the blocks did not write (embeddings, norms, head) and write the shard index."""
        # what the model itself holds (an old checkpoint's stale buffers, e.g. BERT's position_ids, are left out,
        # as save_pretrained leaves them out of a folder loaded whole)
        wanted = {self.checkpoint.key(name, self.prefix) for name in self.model.state_dict()}
        rest = [n for n in self.checkpoint.files if n not in self.written and n in wanted]
        if rest:
            self._write_shard(self.n_blocks, self.checkpoint.read(rest))
        from edgeprune.io import write_json

        write_json(self.out / INDEX, {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))})
        config = json.loads((self.checkpoint.folder / "config.json").read_text())
        config["torch_dtype"] = str(self.storage).removeprefix("torch.")
        write_json(self.out / "config.json", config)
        (self.out / PROGRESS).unlink(missing_ok=True)
