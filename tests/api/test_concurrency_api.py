"""Single-flight through the whole app: concurrent identical searches make one upstream request each."""

from __future__ import annotations

import asyncio

import httpx

from app.main import create_app
from tests.api.conftest import instance_row, settings, study_row


def test_concurrent_identical_searches_share_upstream_calls():
    calls: list[str] = []

    async def slow_pacs(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        await asyncio.sleep(0.2)
        if request.url.path.endswith("/studies"):
            return httpx.Response(200, json=[study_row("1.2.3.1")])
        return httpx.Response(200, json=[instance_row("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1")])

    app = create_app(settings(), transport=httpx.MockTransport(slow_pacs))

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://facade.test") as client:
                return await asyncio.gather(*(client.get("/fhir/R4/ImagingStudy?modality=CT") for _ in range(10)))

    responses = asyncio.run(run())
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert calls == ["/dicom-web/studies", "/dicom-web/instances"]
