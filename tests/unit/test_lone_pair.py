"""bench.lone_pair's command line and its summary of paired rounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.lone_pair import parse_args, summarize


def test_two_variants_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--variant", "a=."])
    assert "two --variant" in capsys.readouterr().err
    args = parse_args(["--variant", "a=.", "--variant", "b=.,CARVE_PUBLISH_LINGER=0"])
    assert [v.label for v in args.variant] == ["a", "b"]
    assert args.variant[1].env == {"CARVE_PUBLISH_LINGER": "0"}
    assert args.variant[0].tree == Path(".").resolve()


def test_summary_gives_medians_and_the_ratio_within_each_round() -> None:
    def figures(bps: float, ingest: float) -> dict[str, float]:
        return {"blocks_per_s": bps, "p50_ms": 1.0, "ingest": ingest, "assembler": 0.5}

    # The machine's load moves both variants together: round 2 is twice as slow for both.
    rounds = [
        {"a": figures(100, 1.0), "b": figures(110, 0.9)},
        {"a": figures(50, 2.0), "b": figures(55, 1.8)},
        {"a": figures(100, 1.0), "b": figures(100, 1.0)},
    ]
    lines = dict(line.split(": ", 1) for line in summarize(rounds, "a", "b"))
    # The medians of the figures (1.0 and 1.0) miss what every round says (0.9, 0.9, 1.0).
    assert lines["ingest"].startswith("a 1.000, b 1.000 (medians); b/a median 0.900")
    assert "(0.900, 0.900, 1.000)" in lines["ingest"]
    assert "b/a median 1.100" in lines["blocks_per_s"]
