"""The routes of the OpenAI-compatible API, over an asyncio gRPC channel to the inference service.

Every answer is JSON; every failure OpenAI's error shape (`errors`), never a traceback. A reply
that streams is sent as server-sent events, `data: {chunk}` then `data: [DONE]`, its headers only
once the first piece came (so a bad model or a full queue is still a plain 4xx). A caller that
goes away cancels its generation upstream: a stream notices when a write fails, a plain request
by polling its connection, and the inference service frees the rows at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from doppel.auth import token_matches
from doppel.config import Settings
from doppel.rpc.channel import auth_metadata, model_metadata, open_aio_channel
from doppel.v1 import inference_pb2 as inf
from doppel.v1 import inference_pb2_grpc

from . import mapping
from .errors import CLIENT_CLOSED, ApiError, from_rpc
from .personas import Directory, entry, listing
from .schema import ChatCompletionRequest, CompletionRequest, parse

log = logging.getLogger(__name__)
GONE_POLL_S = 0.25  # how often a plain request looks whether its caller is still there
HEALTH_TIMEOUT_S = 2.0
SERVICE = "doppel.v1.InferenceService"
Handler = Callable[[Request], Awaitable[Response]]


class ClientGone(Exception):
    """The caller closed the connection before its answer was ready."""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def _event(body: Any) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


class Gateway:
    """The app's state: the channel to the inference service, the model directory, the limits."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.token = settings.token()
        self.metadata = auth_metadata(self.token)
        self.timeout = settings.rpc_timeout_s
        self.max_body = settings.openai_max_request_kb * 1024
        self.directory = Directory(self._models)

    async def _models(self) -> list[inf.ServedModel]:
        answer = await self.stub.ListServedModels(inf.ListServedModelsRequest(), metadata=self.metadata, timeout=self.timeout)
        return list(answer.models)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The channel, open while the app serves: made on the server's own event loop, which it belongs to."""
        s = self.settings
        self.channel = open_aio_channel(s.inference_addr, max_message_mb=s.max_message_mb)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            yield
        finally:
            await self.channel.close()

    # --- the plumbing every route shares ---------------------------------------------------

    def route(self, handler: Handler, *, public: bool = False) -> Handler:
        """`handler` behind the token check, its failures answered in OpenAI's shape."""

        async def guarded(request: Request) -> Response:
            try:
                if not public:
                    self._authorize(request)
                return await handler(request)
            except ApiError as e:
                return _json(e.body(), e.status, e.headers)
            except grpc.aio.AioRpcError as e:
                failure = from_rpc(e)
                return _json(failure.body(), failure.status, failure.headers)
            except (ClientGone, ClientDisconnect):
                log.info("%s %s: the caller went away; its generation was cancelled", request.method, request.url.path)
                return Response(status_code=CLIENT_CLOSED)

        return guarded

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token_matches(given.strip(), self.token):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <DOPPEL_API_TOKEN>`",
                           code="invalid_api_key")

    async def _body(self, request: Request) -> bytes:
        """The request's body, read no further than the limit (413 beyond it)."""
        too_big = ApiError(413, f"the request body is over {self.max_body // 1024} KiB (DOPPEL_OPENAI_MAX_REQUEST_KB)",
                           code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def _unless_gone(self, request: Request, work: Awaitable[Any], calls: list[Any]) -> Any:
        """`work`'s result, unless the caller goes away first or it fails: then every one of its `calls`
        is cancelled (one failed prompt of several stops the others)."""
        waiting = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=GONE_POLL_S)
                if done:
                    return waiting.result()
                if await request.is_disconnected():
                    raise ClientGone
        except BaseException:
            waiting.cancel()
            for call in calls:
                call.cancel()
            raise

    def _stream(self, events: AsyncGenerator[bytes]) -> Response:
        return _ClosingStream(events, media_type="text/event-stream",
                              headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- routes -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """200 while the inference service answers its health check, 503 otherwise (for compose and `doppel up`)."""
        try:
            answer = await self.health_stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=HEALTH_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            return _json({"status": "unavailable", "inference": e.code().name}, 503)
        serving = answer.status == health_pb2.HealthCheckResponse.SERVING
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        return _json({"status": "ok" if serving else "unavailable", "inference": name}, 200 if serving else 503)

    async def list_models(self, request: Request) -> Response:
        return _json({"object": "list", "data": listing(await self.directory.models())})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        target = await self.directory.resolve(name)
        return _json(entry(target.model, name, target.speaker))

    async def chat(self, request: Request) -> Response:
        body = parse(ChatCompletionRequest, await self._body(request))
        target = await self.directory.resolve(body.model)
        chat = mapping.chat_request(body, target)
        reply = mapping.Reply("chatcmpl", body.model)
        if not body.stream:
            call = self.stub.Chat(chat, metadata=self.metadata + model_metadata(chat))
            return _json(mapping.chat_completion(reply, await self._unless_gone(request, call, [call])))
        call = self.stub.ChatStream(inf.ChatStreamRequest(chat=chat), metadata=self.metadata + model_metadata(chat))
        pieces = await self._pieces(request, [call])
        return self._stream(self._chat_events(reply, body, pieces, target.speaker))

    async def complete(self, request: Request) -> Response:
        body = parse(CompletionRequest, await self._body(request))
        target = await self.directory.resolve(body.model)
        prompts = body.prompts
        reply = mapping.Reply("cmpl", body.model)
        asks = [mapping.complete_request(body, target, p) for p in prompts]
        if not body.stream:
            calls = [self.stub.Complete(a, metadata=self.metadata + model_metadata(a)) for a in asks]
            answers = await self._unless_gone(request, asyncio.gather(*calls), calls)
            return _json(mapping.text_completion(reply, answers, prompts, body.echo))
        streams = [self.stub.CompleteStream(inf.CompleteStreamRequest(complete=a), metadata=self.metadata + model_metadata(a))
                   for a in asks]
        pieces = await self._pieces(request, streams)
        return self._stream(self._text_events(reply, body, pieces, prompts))

    # --- streams ----------------------------------------------------------------------------

    async def _pieces(self, request: Request, calls: list[Any]) -> AsyncGenerator[tuple[int, Any]]:
        """(call index, piece) of every call, as they come; awaited here until each call's first piece,
        so an error before any text is an HTTP status rather than an event."""
        firsts = await self._unless_gone(request, asyncio.gather(*(c.read() for c in calls)), calls)
        return _merged(calls, firsts)

    async def _chat_events(self, reply: mapping.Reply, body: ChatCompletionRequest, pieces: AsyncGenerator[tuple[int, Any]],
                           speaker: str) -> AsyncGenerator[bytes]:
        usage = body.include_usage
        prompt_tokens = completion_tokens = 0
        for k in range(body.n):
            yield _event(mapping.chat_chunk(reply, k, {"role": "assistant", "content": "", "name": speaker}, None, usage))
        async with contextlib.aclosing(pieces):
            async for _, piece in pieces:
                if piece.delta:
                    yield _event(mapping.chat_chunk(reply, piece.index, {"content": piece.delta}, None, usage))
                if piece.finish_reason:
                    prompt_tokens, completion_tokens = max(prompt_tokens, piece.prompt_tokens), completion_tokens + piece.tokens
                    yield _event(mapping.chat_chunk(reply, piece.index, {}, mapping.FINISH[piece.finish_reason], usage))
        if usage:
            yield _event(mapping.usage_chunk(reply, "chat.completion.chunk", prompt_tokens, completion_tokens))
        yield b"data: [DONE]\n\n"

    async def _text_events(self, reply: mapping.Reply, body: CompletionRequest, pieces: AsyncGenerator[tuple[int, Any]],
                           prompts: list[str]) -> AsyncGenerator[bytes]:
        usage = body.include_usage
        prompt_tokens = completion_tokens = 0
        if body.echo:
            for p, prompt in enumerate(prompts):
                for k in range(body.n):
                    yield _event(mapping.text_chunk(reply, p * body.n + k, prompt, None, usage))
        async with contextlib.aclosing(pieces):
            async for p, piece in pieces:
                index = p * body.n + piece.index
                if piece.delta:
                    yield _event(mapping.text_chunk(reply, index, piece.delta, None, usage))
                if piece.finish_reason:
                    completion_tokens += piece.tokens
                    prompt_tokens += piece.prompt_tokens if piece.index == 0 else 0
                    yield _event(mapping.text_chunk(reply, index, "", mapping.FINISH[piece.finish_reason], usage))
        if usage:
            yield _event(mapping.usage_chunk(reply, "text_completion", prompt_tokens, completion_tokens))
        yield b"data: [DONE]\n\n"


async def _merged(calls: list[Any], firsts: list[Any]) -> AsyncGenerator[tuple[int, Any]]:
    """The pieces of every call, in the order they come, each with its call's index; an error of any
    call raised here; every call cancelled when this is closed early."""
    if len(calls) == 1:  # no task or queue between one call and its caller
        try:
            piece = firsts[0]
            while piece is not grpc.aio.EOF:
                yield 0, piece
                piece = await calls[0].read()
        finally:
            calls[0].cancel()
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(k: int, call: Any, piece: Any) -> None:
        try:
            while piece is not grpc.aio.EOF:
                queue.put_nowait((k, piece))
                piece = await call.read()
        except grpc.aio.AioRpcError as e:
            queue.put_nowait((k, e))
        finally:
            queue.put_nowait((k, None))

    tasks = [asyncio.create_task(pump(k, c, f)) for k, (c, f) in enumerate(zip(calls, firsts, strict=True))]
    left = len(calls)
    try:
        while left:
            k, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, grpc.aio.AioRpcError):
                raise item
            else:
                yield k, item
    finally:
        for task in tasks:
            task.cancel()
        for call in calls:
            call.cancel()


class _ClosingStream(StreamingResponse):
    """A stream of events whose source is closed as soon as sending ends, however it ends (the caller
    gone included), so the generation upstream is cancelled at once; an upstream error after the
    first event is sent as an `error` event, which OpenAI's clients raise."""

    def __init__(self, events: AsyncGenerator[bytes], **kwargs: Any):
        self._events = events
        super().__init__(self._guarded(), **kwargs)

    async def _guarded(self) -> AsyncIterator[bytes]:
        try:
            async for event in self._events:
                yield event
        except grpc.aio.AioRpcError as e:
            yield _event(from_rpc(e).body())
        finally:
            await self._events.aclose()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            log.info("%s: the caller went away mid-stream; its generation was cancelled", scope.get("path"))
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]  # an async generator


def build(settings: Settings) -> Starlette:
    """The ASGI app of the API (run it with its lifespan: that opens its channel)."""
    gateway = Gateway(settings)
    route = gateway.route
    routes = [
        Route("/health", route(gateway.health, public=True), methods=["GET"]),
        Route("/v1/models", route(gateway.list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", route(gateway.get_model), methods=["GET"]),
        Route("/v1/chat/completions", route(gateway.chat), methods=["POST"]),
        Route("/v1/completions", route(gateway.complete), methods=["POST"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").body(), exc.status_code)

    async def bug(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _json(ApiError(500, "internal error in the gateway; its log has the details").body(), 500)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: bug},
                     lifespan=lambda _app: gateway.running())
