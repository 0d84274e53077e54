"""The job store alone (SQLite in a temp dir, no Ray): rules the API relies on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipewave.api.db import make_engine
from pipewave.api.models import StepPoint
from pipewave.api.store import IdempotencyConflict, JobStore

SPEC = {"name": "s", "steps": 10, "model": {"kind": "mlp"}}


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")


def test_terminal_states_never_change(store: JobStore, tmp_path: Path) -> None:
    row, created = store.create_job(SPEC, lambda i: tmp_path / i, 1)
    assert created and row.state == "QUEUED"
    assert store.set_phase(row.id, "RUNNING", "go")
    assert store.set_phase(row.id, "CANCELLED", "stop")
    assert not store.set_phase(row.id, "RUNNING", "too late")
    assert store.get(row.id).state == "CANCELLED"  # type: ignore[union-attr]
    kinds = [(e.kind, e.data["state"]) for e in store.events(row.id)]
    assert kinds == [("state", "QUEUED"), ("state", "RUNNING"), ("state", "CANCELLED")]


def test_idempotency_keys(store: JobStore, tmp_path: Path) -> None:
    a, created_a = store.create_job(SPEC, lambda i: tmp_path / i, 1, "k")
    b, created_b = store.create_job(dict(reversed(list(SPEC.items()))), lambda i: tmp_path / i, 1, "k")
    assert created_a and not created_b and a.id == b.id  # the same body in another key order
    with pytest.raises(IdempotencyConflict):
        store.create_job({**SPEC, "steps": 11}, lambda i: tmp_path / i, 1, "k")
    assert store.list_jobs()[1] == 1


def test_metrics_replace_by_step_and_delete_removes_history(store: JobStore, tmp_path: Path) -> None:
    row, _ = store.create_job(SPEC, lambda i: tmp_path / i, 1)
    store.put_metrics(row.id, [StepPoint(step=1, time=1.0, loss=2.0, samples_per_s=None)])
    store.put_metrics(row.id, [StepPoint(step=1, time=2.0, loss=2.0, samples_per_s=5.0, stage_busy_s=[0.1])])
    (p,) = store.metrics(row.id)
    assert p.samples_per_s == 5.0 and p.stage_busy_s == [0.1]
    store.delete(row.id)
    assert store.get(row.id) is None and store.metrics(row.id) == [] and store.events(row.id) == []


def test_a_column_added_by_a_newer_version_is_added_in_place(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    make_engine(f"sqlite:///{db}").dispose()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE timelines DROP COLUMN steps")  # a database from before the column
    con.commit()
    con.close()
    store = JobStore(f"sqlite:///{db}")
    row, _ = store.create_job(SPEC, lambda i: tmp_path / i, 1)
    assert store.timeline_steps(row.id) == ""


def test_a_postgresql_url_uses_the_installed_driver(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    from pipewave.api.settings import Settings

    url = Settings(home=tmp_path, database_url="postgresql://pipewave@db.internal/pipewave").db_url
    assert url == "postgresql+psycopg://pipewave@db.internal/pipewave"
    assert create_engine(url).dialect.driver == "psycopg"  # (no connection is made)
