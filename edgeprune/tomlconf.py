"""Strict TOML → frozen dataclass: the one loader behind device profiles and recipe steps.

Every key must be a field of the dataclass, every value must have the field's type, and every
error names the file, the line and the key, so a typo in a checked-in recipe is a one-line fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError

_SCALARS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _header(line: str) -> tuple[str, ...] | None:
    m = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
    return tuple(p.strip().strip("\"'") for p in m.group(1).split(".")) if m else None


def line_of(text: str, table: tuple[str, ...], key: str | None = None) -> int | None:
    """Line number of ``key`` inside ``[table]`` (or of the table's header when ``key`` is None).

    Handles ``[a.b]`` headers, keys inside them, and keys of an inline table (``calib = { samples = 2 }``).
    """
    lines = text.splitlines()
    current: tuple[str, ...] = ()
    header_line = None
    key_re = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=") if key else None
    for number, line in enumerate(lines, 1):
        head = _header(line)
        if head is not None:
            current = head
            if key and head == table + (key,):
                return number
            if head == table and header_line is None:
                header_line = number
            continue
        if key_re and current == table and key_re.match(line):
            return number
    if key and len(table) >= 1:  # a key of an inline table: find the parent key's line and look on it
        parent = line_of(text, table[:-1], table[-1])
        if parent is not None and re.search(rf"\b{re.escape(key)}\s*=", lines[parent - 1]):
            return parent
    return header_line if table else None


def _where(path: Path, text: str, table: tuple[str, ...], key: str | None) -> str:
    line = line_of(text, table, key)
    return f"{path}:{line}" if line else str(path)


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SCALARS:
        return _SCALARS[tp]
    if origin is tuple:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


def unwrap_optional(tp) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def convert(tp, value, key: str, where: str, path: Path, text: str, table: tuple[str, ...]):
    """``value`` (as tomllib read it) as type ``tp``, or a one-line error at ``where``."""
    tp, _ = unwrap_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad():
        raise EdgepruneError(f"{where}: '{key}' must be {_describe(tp)}, not {type(value).__name__}",
                             "fix the value on that line")

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            bad()
        return build(tp, value, path, text, table + (key,))
    if tp is Any:
        return value
    if origin is tuple:
        if not isinstance(value, list):
            bad()
        try:
            return tuple(convert(args[0], v, key, where, path, text, table) for v in value)
        except EdgepruneError:
            bad()
    if origin is dict:
        if not isinstance(value, dict):
            bad()
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): convert(value_type, v, f"{key}.{k}", where, path, text, table) for k, v in value.items()}
    if tp in _SCALARS:
        if isinstance(value, bool) and tp is not bool:
            bad()
        if tp is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, tp):
            bad()
        return value
    raise TypeError(f"tomlconf cannot read a field of type {tp}")  # a programming error, not user input


def build(cls, data: dict, path: str | Path, text: str, table: tuple[str, ...] = (), what: str | None = None):
    """An instance of dataclass ``cls`` from the TOML table ``data`` (found at ``table`` in ``text``)."""
    path = Path(path)
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    label = what or (f"[{'.'.join(table)}]" if table else "this file")
    values = {}
    for key, value in data.items():
        where = _where(path, text, table, key)
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=2, cutoff=0.6)
            raise EdgepruneError(f"{where}: unknown key '{key}' in {label}",
                                 f"did you mean {' or '.join(near)}?" if near else f"known keys: {', '.join(fields)}")
        values[key] = convert(hints[key], value, key, where, path, text, table)
    try:
        return cls(**values)
    except EdgepruneError as exc:
        key = next((k for k in values if re.search(rf"(^|[\s'(]){re.escape(k)}\b", exc.problem)), None) or \
            next((k for k, v in values.items() if isinstance(v, str) and v and f"'{v}'" in exc.problem), None)
        where = _where(path, text, table, key)
        raise EdgepruneError(f"{where}: {exc.problem}", exc.fix) from None
    except TypeError as exc:  # a required field left out
        raise EdgepruneError(f"{_where(path, text, table, None)}: {label}: {exc}", "add the missing key") from None


def parse_set(assignment: str, source: str = "--set") -> tuple[tuple[str, ...], Any, str]:
    """``a.b.c=VALUE`` → (keys, VALUE read as TOML or else as a plain string, VALUE as written)."""
    import tomllib

    if "=" not in assignment:
        raise EdgepruneError(f"{source} '{assignment}' is not KEY=VALUE", "write it like --set prune.sparsity=0.5")
    dotted, raw = (s.strip() for s in assignment.split("=", 1))
    keys = tuple(k for k in dotted.split(".") if k)
    if not keys:
        raise EdgepruneError(f"{source} '{assignment}' names no key", "write it like --set prune.sparsity=0.5")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return keys, value, raw


def set_path(data: dict, keys: tuple[str, ...], value, source: str = "--set") -> None:
    """``data[k1][k2]...[kn] = value``, creating tables on the way."""
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise EdgepruneError(f"{source} '{'.'.join(keys)}': '{k}' is not a table", "set a key inside a table, e.g. prune.calib.samples=8")
    node[keys[-1]] = value


__all__ = ["build", "convert", "line_of", "parse_set", "set_path", "unwrap_optional"]
