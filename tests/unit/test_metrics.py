"""service/control/metrics.py: per-step metrics and a run's figures from hand-made run reports
(times in whole and half seconds: every expected value is exact)."""

from __future__ import annotations

import math

import pytest

from pipewave.service.control.metrics import JobSummary, RunFigures, StepMetrics, run_figures, step_metrics
from pipewave.workers.actions import Action, Kind
from pipewave.workers.stage import RunReport

F, B = Kind.F, Kind.B


def reports() -> list[RunReport]:
    """Two stages, two steps of two microbatches (mb 0-1: step 0, mb 2-3: step 1), from t = 10."""
    stage0 = RunReport(stage=0, spans=[
        (Action(0, F, 0), 10.0, 11.0), (Action(0, F, 1), 11.0, 12.0),
        (Action(0, B, 0), 13.0, 14.0), (Action(0, B, 1, update=True), 15.0, 16.0),
        (Action(0, F, 2, 1), 16.0, 17.0), (Action(0, F, 3, 1), 17.0, 18.0),
        (Action(0, B, 2, 1), 19.0, 20.0), (Action(0, B, 3, 1, update=True), 21.0, 22.0),
    ], cpu_s=[0.5, 0.5, 1.0], busy_s=8.0, update_s=1.0, peak_versions=1, peak_activations=2)
    stage1 = RunReport(stage=1, spans=[
        (Action(1, F, 0), 11.0, 12.0), (Action(1, B, 0), 12.0, 13.0),
        (Action(1, F, 1), 13.0, 14.0), (Action(1, B, 1, update=True), 14.0, 15.0),
        (Action(1, F, 2, 1), 18.0, 19.0), (Action(1, B, 2, 1), 19.0, 19.5),
        (Action(1, F, 3, 1), 20.0, 21.0), (Action(1, B, 3, 1, update=True), 21.0, 21.5),
    ], losses={0: 2.0, 1: 4.0, 2: 1.0, 3: 2.0}, cpu_s=[1.0] * 8, busy_s=7.0, update_s=0.5,
        peak_versions=1, peak_activations=1)
    return [stage0, stage1]


def test_step_metrics_per_step() -> None:
    first, second = step_metrics(reports(), first_step=5, num_steps=2, microbatches=2, batch_size=12,
                                 t_start=10.0)
    # step 1 ends with stage 0's backward of microbatch 1 at 16, step 2 with its last at 22
    assert first == StepMetrics(step=6, loss=3.0, samples_per_s=2.0, time_s=6.0,
                                stage_busy_s=(4.0, 4.0), stage_idle_s=(2.0, 2.0),
                                stage_cpu_s=(2.0, 4.0))  # stage 0 reported three spans' CPU
    assert second == StepMetrics(step=7, loss=1.5, samples_per_s=2.0, time_s=6.0,
                                 stage_busy_s=(4.0, 3.0), stage_idle_s=(2.0, 3.0),
                                 stage_cpu_s=(0.0, 4.0))
    assert first.to_dict()["stage_busy_s"] == (4.0, 4.0) and first.to_dict()["predicted_stage_busy_s"] == ()


def test_a_step_is_timed_from_the_previous_steps_end() -> None:
    """A step that ends before the previous one (stages overlap steps) is not negative time."""
    early, late = reports()
    late.spans = [(Action(1, F, 0), 10.0, 11.0), (Action(1, F, 2, 1), 11.0, 12.0)]
    late.losses = {0: 1.0}
    early.spans = [(Action(0, F, 0), 10.0, 20.0)]
    first, second = step_metrics([early, late], 0, 2, 2, 4, t_start=10.0)
    assert (first.step, first.time_s, first.samples_per_s, first.loss) == (1, 10.0, 0.4, 1.0)
    assert second.time_s == 1e-9 and second.stage_busy_s == (0.0, 1.0) and second.stage_idle_s == (1e-9, 0.0)
    assert math.isnan(second.loss)  # no loss reported for it


def test_run_figures() -> None:
    fig = run_figures(reports())
    assert fig == RunFigures(wall_s=12.0, busy_s=(8.0, 7.0), peak_versions=(1, 1), peak_activations=(2, 1),
                             mean_forward_s=(1.0, 1.0),
                             mean_backward_s=((4.0 - 1.0) / 4, (3.0 - 0.5) / 4),
                             mean_update_s=(0.5, 0.25))
    assert fig.bubble == pytest.approx((1 - 8 / 12, 1 - 7 / 12))


def test_run_figures_skip_a_stage_without_spans() -> None:
    idle = RunReport(stage=2)
    fig = run_figures([*reports(), idle])
    assert fig.wall_s == 12.0 and fig.busy_s == (8.0, 7.0, 0.0)
    assert (fig.mean_forward_s[2], fig.mean_backward_s[2], fig.mean_update_s[2]) == (0.0, 0.0, 0.0)
    assert fig.bubble[2] == 1.0


def test_bubble_of_an_empty_run() -> None:
    assert RunFigures(0.0, (0.0,), (0,), (0,), (0.0,), (0.0,), (0.0,)).bubble == ()


def test_job_summary_to_dict() -> None:
    summary = JobSummary("j", "1f1b", 2, "SUCCEEDED", 4, 0.5, 10.0, 2.0, 1.0, partition=[[0, 2], [2, 4]])
    data = summary.to_dict()
    assert data["partition"] == [[0, 2], [2, 4]] and data["bubble"] == [] and data["rebalances"] == 0
    assert (data["name"], data["final_loss"], data["first_step"]) == ("j", 0.5, 0)
