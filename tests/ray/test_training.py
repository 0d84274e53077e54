"""Each schedule trains a small GPT on the default corpus (the stdlib), and the asynchronous
schedules end within 5% of the synchronous loss at equal samples.

Figures (400 steps of 16 x 32 bytes, Adam 3e-4, mean loss of the last 20 steps): 1f1b = gpipe
2.605, pipedream 2.351, 2bw 2.654 (+1.9%). At lr 3e-3 2BW's one-step-stale gradients cost more
(+8% in a single-process check of the same formula), so the staleness is real, not a runtime bug.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import new_spec as make_spec
from harness import run_spec as run_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS = 400


def final_loss(metrics: list, window: int = 20) -> float:
    return sum(m.loss for m in metrics[-window:]) / window


@pytest.fixture(scope="module")
def results(_ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for schedule in ("1f1b", "gpipe", "pipedream", "2bw"):
        spec = make_spec(
            schedule=schedule, steps=STEPS, batch_size=16, microbatches=4, data={"kind": "stdlib"},
            model={"kind": "gpt", "vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 2,
                   "seq_len": 32},
            optimizer={"kind": "adam", "lr": 3e-4},
        )
        ctl, summary = run_job(spec, Path(tmp_path_factory.mktemp(schedule)))
        assert summary.state == "SUCCEEDED", summary.reason
        out[schedule] = (ctl.metrics[0].loss, final_loss(ctl.metrics))
    return out


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe", "pipedream", "2bw"])
def test_loss_falls_clearly(results: dict[str, tuple[float, float]], schedule: str) -> None:
    first, last = results[schedule]
    assert last < 0.6 * first, (schedule, first, last)


@pytest.mark.parametrize("schedule", ["pipedream", "2bw"])
def test_async_within_5_percent_of_sync(results: dict[str, tuple[float, float]], schedule: str) -> None:
    """No worse than 5% above the synchronous loss. PipeDream may end clearly *below* it: it takes
    one optimizer step per microbatch (M times as many as the synchronous schedules)."""
    sync = results["1f1b"][1]
    assert results["gpipe"][1] == pytest.approx(sync, rel=1e-4)
    assert results[schedule][1] <= 1.05 * sync, (schedule, results)
