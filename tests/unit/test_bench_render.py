"""The benchmarks' pure parts, checked against their committed results: each report's Markdown is
rebuilt from its JSON exactly, and the engine benchmark's verdicts (medians over rounds, paired
ratios, the chunked schedules' analysis, the targets) are recomputed from the raw runs.

The benchmarks are scripts with benchmarks/ as their import path (``python benchmarks/engine.py``),
so this module puts benchmarks/ on the path the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from enginebench import config, report, verdicts  # noqa: E402


def results(stem: str) -> tuple[dict[str, Any], str]:
    return json.loads((BENCH / f"{stem}.json").read_text()), (BENCH / f"{stem}.md").read_text()


@pytest.mark.parametrize("stem", ["results", "llama-results"])
def test_engine_report_is_rebuilt_from_its_json(stem: str) -> None:
    data, markdown = results(stem)
    assert report.render(data) == markdown


@pytest.mark.parametrize("stem", ["results", "llama-results"])
def test_engine_verdicts_follow_from_the_raw_runs(stem: str) -> None:
    data, _ = results(stem)
    args = data["args"]
    configs = [config.Config.parse(name) for name in args["configs"]]
    rows = verdicts.aggregate(configs, data["runs"])
    verdicts.chunk_analysis(rows, args["steps"], args["warmup"])
    assert rows == data["rows"]
    assert verdicts.targets(rows, config.WORKLOADS[data.get("workload", "gpt")]) == data["targets"]


@pytest.mark.parametrize("stem, module", [("partition-results", "partition"),
                                          ("elastic-results", "elastic"),
                                          ("service-results", "service_report")])
def test_other_reports_are_rebuilt_from_their_json(stem: str, module: str) -> None:
    data, markdown = results(stem)
    assert __import__(module).render(data) == markdown


def test_config_names_round_trip_and_bad_ones_are_refused() -> None:
    for name in config.DEFAULT_CONFIGS:
        assert config.Config.parse(name).name == name
    assert config.Config.parse("pipewave:hanayo-w2:4").chunks == 4
    assert config.Config.parse("pipewave:interleaved-1f1b-c3:2").spec_fields == {
        "schedule": "interleaved-1f1b", "chunks": 3}
    for bad in ("pipewave:1f1b:1", "pipewave:interleaved-1f1b-c1:2", "torch:2bw:2", "single:5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="bad config"):
            config.Config.parse(bad)
