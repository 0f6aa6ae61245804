"""Property-based API test: schemathesis generates requests from /openapi.json; none may get a 5xx.

Every operation is called with generated path, query, header and body values (valid and
invalid), with the API token. A 5xx means bad input reached code that did not expect it.
The examples per operation are limited so the whole file takes well under two minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from medhub.serve.app import create_app
from medhub.serve.settings import ServeSettings

TOKEN = "schemathesis-token"


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    data: Path = tmp_path_factory.mktemp("serve-schemathesis")
    app = create_app(ServeSettings(data_dir=data, token=TOKEN, max_upload_bytes=4 * 1024 * 1024, max_queued=4))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield schema
    app.state.jobs.stop()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    case.validate_response(response, checks=[not_a_server_error])
    content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis keeps every header as a list
    assert content_type.startswith(
        ("application/json", "application/zip", "application/dicom", "application/gzip", "application/octet-stream",
         "text/event-stream")) or response.status_code == 204, response.text[:200]
