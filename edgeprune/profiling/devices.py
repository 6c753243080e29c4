"""Device profiles: plain TOML files in devices/ describing a target (threads, cores, execution providers,
memory and latency budgets, how long to measure, and optionally the real device to measure on over ssh), loaded
into a frozen, strictly validated dataclass.

    edgeprune profile out/smol-onnx --device devices/phone-arm-big4.toml --out runs/smol-phone
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import EdgepruneError
from edgeprune.shipped import shipped_dir
from edgeprune.tomlconf import build

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
QUANTIZATION_PRESETS = ("none", "int8", "int4")


@dataclass(frozen=True)
class DeviceProfile:
    """A target device as data. Limits are enforced on the measuring process; budgets are pass/fail."""

    name: str
    description: str = ""
    intra_op_threads: int | None = None  # None: as many as the cores the process may use
    cores: tuple[int, ...] | None = None  # CPU affinity; cores this host lacks are clamped away (and reported)
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)  # in order of preference
    require_providers: bool = False  # true: a provider not installed is an error, not a fallback to CPU
    graph_optimization: str = "all"  # disable | basic | extended | all
    quantization: str = "none"  # the ORT quantisation preset that suits the device: none | int8 | int4
    cpu_mem_arena: bool = True
    mem_pattern: bool = True
    memory_budget_mb: float | None = None  # pass/fail on peak RSS
    memory_limit_mb: float | None = None  # hard cap: the measuring process is killed above it
    latency_p90_ms_budget: float | None = None  # pass/fail on p90 latency (encoders) or time to first token (decoders)
    decode_ms_per_token_budget: float | None = None  # pass/fail on mean decode ms/token
    nm_kernels: bool = False  # the runtime has N:M sparse kernels (N:M pruning saves time or memory); no CPU runtime does
    warmup: int = 10
    runs: int = 30
    min_seconds: float = 0.0  # keep measuring until both `runs` and this duration are reached
    # The real device, when there is one: profiling runs there over ssh (`--local` emulates it here instead).
    remote: str | None = None  # ssh://user@host[:port]
    remote_python: str = "python3"  # the device's Python (>= 3.9, with numpy and onnxruntime)
    identity: str | None = None  # ssh private key (ssh -i); None: ssh's own choice (agent, ~/.ssh/config, default keys)
    remote_dir: str = "~/.cache/edgeprune-remote"  # on the device: models/<sha256>/ (kept, reused) and runs/ (removed)

    def __post_init__(self):
        def bad(key, problem, fix):
            raise EdgepruneError(f"device profile '{self.name}': {key} {problem}", fix)

        if not self.name or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            bad("name", f"'{self.name}' is not a plain name", "use letters, digits, '.', '_' or '-'")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            bad("intra_op_threads", f"is {self.intra_op_threads}", "use 1 or more, or leave it out for all cores")
        if self.cores is not None and (not self.cores or any(c < 0 for c in self.cores) or len(set(self.cores)) != len(self.cores)):
            bad("cores", f"{list(self.cores)} is not a list of distinct core numbers", "use e.g. cores = [4, 5, 6, 7]")
        if not self.execution_providers:
            bad("execution_providers", "is empty", 'use e.g. ["CPUExecutionProvider"]')
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            bad("graph_optimization", f"'{self.graph_optimization}' is unknown", f"use one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
        if self.quantization not in QUANTIZATION_PRESETS:
            bad("quantization", f"'{self.quantization}' is unknown", f"use one of {', '.join(QUANTIZATION_PRESETS)}")
        for key in ("memory_budget_mb", "memory_limit_mb", "latency_p90_ms_budget", "decode_ms_per_token_budget"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                bad(key, f"is {value}", "use a positive number, or leave it out")
        if self.warmup < 0:
            bad("warmup", f"is {self.warmup}", "use 0 or more")
        if self.runs < 1:
            bad("runs", f"is {self.runs}", "use 1 or more")
        if self.min_seconds < 0:
            bad("min_seconds", f"is {self.min_seconds}", "use 0 or more")
        if self.remote is not None:
            from edgeprune.profiling.remote import parse_target

            parse_target(self.remote)
        for key in ("remote_python", "remote_dir"):
            if not getattr(self, key).strip():
                bad(key, "is empty", f"leave {key} out for the default, or name a path on the device")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def load_device(path: str | Path) -> DeviceProfile:
    """Read and validate a device profile; any unknown key or bad value is a one-line error naming the key and its line."""
    path = Path(path)
    if not path.is_file() and path.suffix != ".toml" and len(path.parts) == 1 and (devices_dir() / f"{path}.toml").is_file():
        path = devices_dir() / f"{path}.toml"  # a shipped profile by name, e.g. "this-host"
    if not path.is_file():
        shipped = sorted(p.stem for p in devices_dir().glob("*.toml")) if devices_dir().is_dir() else []
        raise EdgepruneError(f"device profile '{path}' not found",
                             f"use one of devices/{{{','.join(shipped)}}}.toml" if shipped else "pass a .toml device profile")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EdgepruneError(f"device profile {path} is not valid TOML: {exc}", "fix the syntax on that line") from None
    if "name" not in data:
        raise EdgepruneError(f"{path}: device profile has no 'name'", 'add a line like name = "my-device"')
    return build(DeviceProfile, data, path, text, what="device profile")


def devices_dir() -> Path:
    """The shipped device profiles: devices/ of the checkout, or its copy inside an installed wheel."""
    return shipped_dir("devices")
