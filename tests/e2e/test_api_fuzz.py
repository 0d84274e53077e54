"""A property-based pass over the OpenAPI schema (schemathesis): whatever a client sends, the
service answers without a 5xx. The real app in-process, with its real store and Ray connection;
only the dispatcher is off, so generated jobs are queued, never trained."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from pipewave.api.app import create_app
from pipewave.api.settings import Settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN = "fuzz-token-0123456789abcdef"
HOME = Path(tempfile.mkdtemp(prefix="pipewave-fuzz-"))
app = create_app(Settings(home=HOME, api_token=TOKEN, dispatch=False))


@pytest.fixture(scope="module")
def api_schema(_ray_session: None) -> schemathesis.BaseSchema:
    from harness import ensure_local_ray

    ensure_local_ray()  # /cluster reads Ray's node table (the app joins this process's Ray)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {TOKEN}"})


def test_no_server_errors(api_schema: schemathesis.BaseSchema) -> None:
    """Every operation, 40 generated requests each (schemathesis's strategies driven by
    hypothesis directly: its pytest plugin does not support this pytest)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 14
    seen: dict[int, int] = {}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
            if response.status_code >= 400:
                assert response.json()["detail"], response.text  # every error says why

        check()
    assert sum(seen.values()) >= 10 * len(operations), seen
    assert {200, 201, 404, 422} <= set(seen), seen  # valid jobs were accepted, bad ones refused
    assert app.state.store.list_jobs()[1] > 0


def test_the_schema_covers_the_api() -> None:
    paths = set(app.openapi()["paths"])
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events",
            "/api/v1/cluster", "/api/v1/cluster/nodes/{node_id}/drain", "/healthz", "/metrics"} <= paths
