import httpx
from fastapi import FastAPI


async def test_healthz_reports_version_and_key_fingerprint(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert len(body["jwt"]["key_fingerprint"]) == 16
    assert response.headers["x-request-id"]


async def test_readyz_reports_migrations_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["migrations"]["at_head"] is True


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


async def test_unknown_route_uses_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope", headers={"X-Request-ID": "rid-1"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert error["request_id"] == "rid-1"


async def test_unhandled_error_keeps_the_request_id(app: FastAPI) -> None:
    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/test-boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/test-boom", headers={"X-Request-ID": "rid-500"})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "Internal server error.",
        "request_id": "rid-500",
    }
    assert response.headers["x-request-id"] == "rid-500"


async def test_readyz_names_the_failure_without_revealing_the_database(
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    from kiban.app import create_app
    from tests.conftest import RunningApp, make_client

    # Nothing listens on port 1: the driver's error names the host and port.
    settings = make_settings(database_url="postgresql+asyncpg://kiban:pw@127.0.0.1:1/kiban")
    async with RunningApp(create_app(settings)) as app, make_client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("error: ")
    assert "127.0.0.1" not in response.text
