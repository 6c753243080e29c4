"""Op breakdown from ORT's profiler trace (a Chrome-trace JSON list of events): time per op type and per node.

Kernel events are cat "Node" named "<node>_kernel_time" with args.op_name; each session.run is one "model_run" event.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from edgeprune.profiling.results import NodeStat, OpProfile, OpStat


def summarize_trace(trace: str | Path, trace_file: str, top: int = 15) -> OpProfile:
    events = json.loads(Path(trace).read_text())
    run_us = sum(e.get("dur", 0) for e in events if e.get("name") == "model_run")
    runs = sum(1 for e in events if e.get("name") == "model_run")
    by_type: dict[str, list] = defaultdict(lambda: [0, 0.0, set()])
    by_node: dict[str, list] = defaultdict(lambda: ["", 0, 0.0])
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        op = (e.get("args") or {}).get("op_name", "?")
        node = name[: -len("_kernel_time")]
        t = by_type[op]
        t[0] += 1
        t[1] += e.get("dur", 0)
        t[2].add(node)
        n = by_node[node]
        n[0], n[1], n[2] = op, n[1] + 1, n[2] + e.get("dur", 0)
    kernel_us = sum(t[1] for t in by_type.values())
    total = run_us or kernel_us or 1
    ops = sorted((OpStat(op, c, len(nodes), us / 1000, 100 * us / total) for op, (c, us, nodes) in by_type.items()),
                 key=lambda s: -s.total_ms)
    nodes = sorted((NodeStat(node, op, c, us / 1000, 100 * us / total) for node, (op, c, us) in by_node.items()),
                   key=lambda s: -s.total_ms)[:top]
    return OpProfile(ops=ops, top_nodes=nodes, run_ms=run_us / 1000, kernel_ms=kernel_us / 1000, runs=runs, trace_file=trace_file)
