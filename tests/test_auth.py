"""DOPPEL_API_TOKEN end to end: no RPC and no data-bearing UI route answers without it, a wrong
token costs what a right one does, and the token shows in no log, error or output.

RPCs go to a real server on port 0 serving every service of `doppel.v1` (servicers that record
each call), and the methods come from the service descriptors the server lists, so a new
method or service is covered without touching this file. The UI is the real Gradio app,
launched with `ui.app.launch_options`, driven with plain HTTP.
"""

from __future__ import annotations

import hmac
import importlib
import json
import logging
import pkgutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

import doppel.v1
from doppel.clients import rpc_error_message
from doppel.config import Settings
from doppel.rpc.server import Service
from support.processes import free_port

TOKEN = "tok-3f9a-RIGHT-e1c07"
WRONG = "tok-3f9a-WRONG-e1c07"
# Missing, wrong, and near misses: longer, shorter, without the scheme, the scheme alone.
DENIED = {
    "missing": (),
    "wrong": (("authorization", f"Bearer {WRONG}"),),
    "longer": (("authorization", f"Bearer {TOKEN}x"),),
    "prefix": (("authorization", f"Bearer {TOKEN[:-1]}"),),
    "no scheme": (("authorization", TOKEN),),
    "empty": (("authorization", "Bearer "),),
}
RIGHT = (("authorization", f"Bearer {TOKEN}"),)
HEALTH = "grpc.health.v1.Health"


# ---- gRPC -------------------------------------------------------------------------------------

def doppel_services() -> Iterator[tuple[Any, Any, ServiceDescriptor]]:
    """(pb2, pb2_grpc, service) for every service of every generated module in doppel.v1."""
    for info in pkgutil.iter_modules(doppel.v1.__path__):
        if info.name.endswith("_pb2"):
            pb2 = importlib.import_module(f"doppel.v1.{info.name}")
            for service in pb2.DESCRIPTOR.services_by_name.values():
                yield pb2, importlib.import_module(f"doppel.v1.{info.name}_grpc"), service


def recording_servicer(service: ServiceDescriptor, calls: list[str]) -> Any:
    """A servicer of every method of `service` that records the call and answers an empty response."""

    def method(m: MethodDescriptor) -> Any:
        response = GetMessageClass(m.output_type)
        if m.server_streaming:
            async def stream(self, request, context):
                calls.append(m.full_name)
                yield response()

            return stream

        async def unary(self, request, context):
            calls.append(m.full_name)
            return response()

        return unary

    return type(f"Recording{service.name}", (), {m.name: method(m) for m in service.methods})()


def invoke(channel: grpc.Channel, m: MethodDescriptor, metadata: tuple[tuple[str, str], ...]) -> None:
    """Call `m` with an empty request (one, for a request stream) and read the first response."""
    request, response = GetMessageClass(m.input_type), GetMessageClass(m.output_type)
    kind = f"{'stream' if m.client_streaming else 'unary'}_{'stream' if m.server_streaming else 'unary'}"
    call = getattr(channel, kind)(f"/{m.containing_service.full_name}/{m.name}",
                                  request_serializer=request.SerializeToString,
                                  response_deserializer=response.FromString)
    reply = call(iter([request()]) if m.client_streaming else request(), metadata=metadata, timeout=10)
    if m.server_streaming:
        try:
            next(reply)
        finally:
            reply.cancel()


def served_methods(channel: grpc.Channel) -> list[MethodDescriptor]:
    """Every method of every service the server lists in reflection (asked with the token)."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        metadata=RIGHT, timeout=10)
    names = [s.name for reply in replies for s in reply.list_services_response.service]
    pool = descriptor_pool.Default()
    return [m for name in names for m in pool.FindServiceByName(name).methods]


def recorded_services(calls: list[str]) -> list[Service]:
    """Every doppel.v1 service, each served by a `recording_servicer` into `calls`."""
    return [Service.of(pb2, pb2_grpc, s.name, recording_servicer(s, calls)) for pb2, pb2_grpc, s in doppel_services()]


@pytest.fixture
def secured(grpc_server):
    """A server with the token set, serving every doppel.v1 service; (address, recorded calls)."""
    calls: list[str] = []
    return grpc_server(recorded_services(calls), token=TOKEN).addr, calls


def status(call) -> grpc.RpcError | None:
    try:
        call()
    except grpc.RpcError as err:
        return err
    return None


def unauthenticated(err: grpc.RpcError | None) -> bool:
    return err is not None and err.code() is grpc.StatusCode.UNAUTHENTICATED


def test_every_method_of_every_service_needs_the_token_but_health(secured):
    addr, calls = secured
    with grpc.insecure_channel(addr) as channel:
        methods = served_methods(channel)
        services = {m.containing_service.full_name for m in methods}
        assert {s.full_name for *_, s in doppel_services()} | {HEALTH, "grpc.reflection.v1alpha.ServerReflection"} <= services
        assert {(m.client_streaming, m.server_streaming) for m in methods} == {
            (False, False), (False, True), (True, False), (True, True)}  # every kind of call is covered
        for m in methods:
            for how, metadata in DENIED.items():
                err = status(lambda m=m, metadata=metadata: invoke(channel, m, metadata))
                if m.containing_service.full_name == HEALTH:  # orchestrators probe it without a token
                    assert not unauthenticated(err), (m.full_name, how, err)
                else:
                    assert unauthenticated(err), (m.full_name, how, err)
        assert calls == []  # no servicer saw a call without the token
        for m in methods:
            err = status(lambda m=m: invoke(channel, m, RIGHT))
            assert not unauthenticated(err), (m.full_name, err)  # health's List, for one, is not implemented
        doppel_methods = [m.full_name for m in methods if m.containing_service.full_name.startswith("doppel.")]
        assert sorted(calls) == sorted(doppel_methods)


def test_unknown_methods_without_the_token_say_nothing_about_what_exists(secured):
    addr, _ = secured
    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary("/doppel.v1.NoSuchService/Nope")
        assert unauthenticated(status(lambda: call(b"", timeout=10)))
        err = status(lambda: call(b"", metadata=RIGHT, timeout=10))
        assert err is not None and err.code() is grpc.StatusCode.UNIMPLEMENTED


def test_health_answers_without_the_token(secured):
    addr, _ = secured
    with grpc.insecure_channel(addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="doppel.v1.IngestService"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def compare_calls(monkeypatch) -> list[tuple[int, int]]:
    """The lengths of what each `hmac.compare_digest` call compared."""
    seen: list[tuple[int, int]] = []
    original = hmac.compare_digest

    def recording(a, b):
        seen.append((len(a), len(b)))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    return seen


def test_every_token_check_is_one_constant_time_comparison_of_equal_lengths(secured, compare_calls):
    addr, _ = secured
    method = "/doppel.v1.IngestService/ListDatasets"
    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary(method)
        attempts = [*DENIED.values(), RIGHT]
        for metadata in attempts:
            status(lambda metadata=metadata: call(b"", metadata=metadata, timeout=10))
    # Missing and wrong-length tokens too: one comparison each, of equal lengths, with no early return.
    assert len(compare_calls) == len(attempts)
    assert all(a == b for a, b in compare_calls), compare_calls


def test_the_timing_bench_runs_and_ends_with_its_figures():
    bench = Path(__file__).resolve().parents[1] / "bench" / "auth_timing.py"
    done = subprocess.run([sys.executable, str(bench), "--checks", "10", "--rounds", "3"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(figures["cases"]) >= {"right", "wrong first byte", "missing"} and figures["same_length_spread"] > 0


def test_the_token_is_in_no_error_and_no_log(grpc_server, caplog):
    caplog.set_level(logging.DEBUG)  # before the server starts: its start-up is logged too
    server = grpc_server(recorded_services([]), token=TOKEN)
    said = []
    with grpc.insecure_channel(server.addr) as channel:
        call = channel.unary_unary("/doppel.v1.IngestService/ListDatasets")
        for metadata in (*DENIED.values(), RIGHT):
            err = status(lambda metadata=metadata: call(b"", metadata=metadata, timeout=10))
            if err is not None:
                said += [err.details(), str(err), rpc_error_message(err)]
        call(b"", metadata=RIGHT, timeout=10)
    assert said and all("DOPPEL_API_TOKEN" in s for s in said[::3])  # says what to send...
    assert "serving doppel.v1." in caplog.text  # (the log was captured)
    for text in [*said, caplog.text]:
        assert TOKEN not in text and WRONG not in text  # ...but never the token, nor a wrong guess


def test_the_cli_shows_the_token_nowhere(grpc_server, tmp_path):
    from doppel.cli.main import app
    from services.ingest.server import build

    runner = CliRunner()
    server = grpc_server(build(Settings(home=tmp_path)), token=TOKEN)
    env = {"DOPPEL_HOME": str(tmp_path), "DOPPEL_INGEST_ADDR": server.addr}
    shown = runner.invoke(app, ["config"], env={**env, "DOPPEL_API_TOKEN": TOKEN})
    assert shown.exit_code == 0 and json.loads(shown.output)["api_token"] == "**********"
    refused = runner.invoke(app, ["datasets", "list"], env={**env, "DOPPEL_API_TOKEN": WRONG})
    assert refused.exit_code == 1 and "UNAUTHENTICATED" in refused.output
    listed = runner.invoke(app, ["datasets", "list"], env={**env, "DOPPEL_API_TOKEN": TOKEN})
    assert listed.exit_code == 0, listed.output
    for result in (shown, refused, listed):
        assert TOKEN not in result.output and WRONG not in result.output


# ---- the UI -----------------------------------------------------------------------------------

def routes(app: Any) -> Iterator[tuple[str, str]]:
    """(method, path template) of every route the Gradio app serves, included routers too."""

    def walk(items: list[Any]) -> Iterator[tuple[str, str]]:
        for route in items:
            if hasattr(route, "path"):
                for method in sorted(getattr(route, "methods", None) or {"GET"}):
                    yield method, route.path
            else:  # an included router
                inner = getattr(route, "original_router", None) or getattr(route, "app", None)
                yield from walk(getattr(inner, "routes", []))

    yield from walk(app.routes)


def filled(template: str) -> str:
    """A concrete path for a route template: each {param} made up."""
    import re

    return re.sub(r"\{[^}]+\}", "x", template)


@pytest.fixture(scope="module")
def ui() -> Iterator[tuple[str, Any]]:
    """The UI as `doppel ui` serves it with the token set, over services that are not there;
    its base URL and the Gradio Blocks."""
    from ui.app import build, launch_options

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), api_token=TOKEN, ui_port=free_port(), ingest_addr=f"127.0.0.1:{free_port()}",
                            trainer_addr=f"127.0.0.1:{free_port()}", inference_addr=f"127.0.0.1:{free_port()}")
        blocks = build(settings)
        blocks.launch(**launch_options(settings), prevent_thread_lock=True, quiet=True)
        try:
            yield f"http://127.0.0.1:{settings.ui_port}", blocks
        finally:
            blocks.close()


def login(base: str, password: str) -> httpx.Response:
    return httpx.post(f"{base}/login", data={"username": "someone", "password": password}, timeout=10)


def cookies(base: str) -> httpx.Cookies:
    reply = login(base, TOKEN)
    assert reply.status_code == 200, reply.text
    return reply.cookies


def test_no_ui_route_but_the_login_page_and_static_code_answers_without_a_login(ui):
    from ui.login import is_public

    base, blocks = ui
    served = sorted(set(routes(blocks.server_app)))
    assert ("POST", "/gradio_api/queue/join") in served and ("GET", "/gradio_api/file={path_or_url:path}") in served
    with httpx.Client(base_url=base, timeout=5, follow_redirects=False) as anonymous:
        for method, template in served:
            path = filled(template)
            if is_public(path):
                continue
            reply = anonymous.request(method, path)
            login_redirect = reply.is_redirect and urlsplit(reply.headers["location"]).path in ("", "/", "/login")
            assert reply.status_code in (401, 403) or login_redirect, (method, template, reply.status_code)
        # The page itself is the login form: none of the app's components, no data.
        page = anonymous.get("/").text
        assert '"auth_required":true' in page and "doppel-status" not in page


def test_the_data_routes_work_after_login(ui, tmp_path):
    base, _ = ui
    upload = tmp_path / "chat.txt"
    upload.write_text("private words\n")
    with httpx.Client(base_url=base, timeout=10) as anonymous, \
            httpx.Client(base_url=base, timeout=10, cookies=cookies(base)) as user:
        for path in ("/config", "/gradio_api/info"):
            assert anonymous.get(path).status_code == 401
            assert user.get(path).status_code == 200
        assert "doppel-status" in user.get("/config").text and "doppel-status" in user.get("/").text
        with upload.open("rb") as f:
            assert anonymous.post("/gradio_api/upload", files={"files": f}).status_code == 401
        with upload.open("rb") as f:
            stored = user.post("/gradio_api/upload", files={"files": f})
        assert stored.status_code == 200, stored.text
        file_route = f"/gradio_api/file={stored.json()[0]}"
        assert anonymous.get(file_route).status_code == 401
        assert user.get(file_route).text == "private words\n"
        joined = user.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "s1"})
        assert anonymous.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0,
                                                                "session_hash": "s1"}).status_code == 401
        assert joined.status_code == 200, joined.text


def test_the_ui_login_compares_in_constant_time_and_never_echoes_the_token(ui, compare_calls):
    base, _ = ui
    refused = login(base, WRONG)
    accepted = login(base, TOKEN)
    assert (refused.status_code, accepted.status_code) == (400, 200)
    assert len(compare_calls) == 2 and all(a == b for a, b in compare_calls)
    with httpx.Client(base_url=base, timeout=10, cookies=accepted.cookies) as user:
        pages = [refused.text, accepted.text, user.get("/").text, user.get("/config").text, httpx.get(base).text]
    for text in pages:
        assert TOKEN not in text and WRONG not in text
