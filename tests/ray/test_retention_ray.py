"""``checkpoint: {every_steps: 1, keep_last: 2}``: a run that writes 10 checkpoints leaves the 2
newest, and a resume takes the newest and goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipewave.service.control.checkpoint import latest

pytestmark = pytest.mark.ray


def test_keep_last_prunes_as_it_goes_and_resume_still_works(make_spec, run_job, tmp_path: Path) -> None:
    spec = make_spec(steps=10, checkpoint={"every_steps": 1, "keep_last": 2})
    ctl, summary = run_job(spec, tmp_path)
    assert summary.state == "SUCCEEDED", summary.reason
    on_disk = sorted(d.name for d in (tmp_path / "checkpoints").iterdir())
    assert on_disk == ["step-000009", "step-000010"]
    assert [Path(c).name for c in ctl.checkpoints] == on_disk
    notes = [e for e in ctl.events if e.kind == "checkpoint"]
    assert len(notes) == 10 and notes[-1].data["pruned"] == [8]
    ctl2, summary2 = run_job(spec.model_copy(update={"steps": 12}), tmp_path, resume=True)
    assert summary2.state == "SUCCEEDED", summary2.reason
    assert summary2.first_step == 10 and [m.step for m in ctl2.metrics] == [11, 12]
    record = latest(tmp_path)
    assert record is not None and record.step == 12
    assert sorted(d.name for d in (tmp_path / "checkpoints").iterdir()) == ["step-000011", "step-000012"]
