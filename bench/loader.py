"""Benchmark: how long `load_fleet_text` takes on hostile fleet.yaml documents, next to ruamel.yaml's plain parse of
fleet.yaml.example measured in the same run.

The loader's property tests (tests/unit/test_loader_properties.py) check what it returns for any text; how fast it
returns is measured here, not in a unit test (a timed unit test fails when the machine is busy, not when the loader
is slow). The documents are the ones that could make a loader slow: every file of tests/invalid/ (alias bombs,
recursive aliases, deep nesting, binary, ...), fleet.yaml.example itself, and the example cut and spliced with
garbage at evenly spaced points (what test_example_text_with_garbage and test_truncated_example generate at random).
Each figure is the median of N loads; the ratio is that over the median of `YAML(typ="rt").load` of the example
(the parse alone, no validation), so it survives a noisy machine. The old unit-test bound was 1 s per document.

    python bench/loader.py            # 15 loads of each document
    python bench/loader.py --quick    # 5 loads of each (a few seconds)
    python bench/loader.py --json     # one JSON object

Called by `make bench` (with --quick).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from ruamel.yaml import YAML  # noqa: E402

from fleet.plugins.registry import load_registry  # noqa: E402
from fleet.schema.api import load_fleet_text  # noqa: E402

LIMIT_S = 1.0  # the bound the loader is held to per document (formerly asserted by the property tests)
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
GARBAGE = ":-[]{}#&*!|>'\"\t\x00"


def documents() -> dict[str, str]:
    example = (ROOT / "fleet.yaml.example").read_text(encoding="utf-8")
    docs = {"fleet.yaml.example": example}
    for path in sorted((ROOT / "tests" / "invalid").glob("*.yaml")):
        docs[f"invalid/{path.name}"] = path.read_bytes().decode("utf-8", errors="replace")
    for i in range(1, 10):
        at = len(example) * i // 10
        docs[f"example cut at {i}0%"] = example[:at]
        docs[f"example + garbage at {i}0%"] = example[:at] + GARBAGE + example[at:]
    return docs


def median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(runs: int) -> dict:
    backends = load_registry().settings_validators()
    docs = documents()
    example = docs["fleet.yaml.example"]
    base = median_s(lambda: YAML(typ="rt").load(io.StringIO(example)), runs)
    load_fleet_text(example, "fleet.yaml", backends=backends, now=NOW)  # warm the schema and plugin caches
    loads = {name: median_s(lambda t=text: load_fleet_text(t, "fleet.yaml", backends=backends, now=NOW), runs)
             for name, text in docs.items()}
    worst = max(loads, key=lambda name: loads[name])
    return {
        "runs": runs,
        "documents": len(docs),
        "baseline_parse_ms": round(base * 1000, 3),
        "example_load_ms": round(loads["fleet.yaml.example"] * 1000, 3),
        "example_ratio": round(loads["fleet.yaml.example"] / base, 2),
        "worst_document": worst,
        "worst_load_ms": round(loads[worst] * 1000, 3),
        "worst_ratio": round(loads[worst] / base, 2),
        "within_limit": loads[worst] < LIMIT_S,
        "loads_ms": {name: round(s * 1000, 3) for name, s in sorted(loads.items(), key=lambda kv: -kv[1])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 loads of each document instead of 15")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    out = run(5 if args.quick else 15)
    if args.json:
        print(json.dumps(out))
        return
    print(f"load_fleet_text over {out['documents']} documents, median of {out['runs']} loads each")
    print(f"  baseline: ruamel.yaml parse of fleet.yaml.example  {out['baseline_parse_ms']:9.3f} ms")
    print(f"  fleet.yaml.example, loaded and validated          {out['example_load_ms']:9.3f} ms"
          f"  ({out['example_ratio']:.2f}x the parse)")
    print(f"  slowest: {out['worst_document']:<40} {out['worst_load_ms']:9.3f} ms  ({out['worst_ratio']:.2f}x the parse;"
          f" limit {LIMIT_S:g} s: {'ok' if out['within_limit'] else 'OVER'})")
    print("  the five slowest:")
    for name, ms in list(out["loads_ms"].items())[:5]:
        print(f"    {name:<48} {ms:9.3f} ms")


if __name__ == "__main__":
    main()
