"""An OpenAI-compatible HTTP server over the engine (Starlette on uvicorn).

Endpoints: /v1/completions, /v1/chat/completions (JSON, or Server-Sent Events
with `stream: true`), /v1/models, /tokenize, /detokenize, /health, /metrics.

Why a framework here when nslab.serving has its own HTTP code: this API
streams (SSE), and uvicorn's parser and Starlette's streaming responses are
what the field runs (vLLM's server is FastAPI on the same two); an LLM step
costs milliseconds, so the framework's microseconds do not show.

Every bad request gets OpenAI's error object and a 4xx; the engine thread is
the only place that computes, so a bad client cannot stall the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from nslab.llm.engine import EngineLoop, LLMEngine, StepOutput
from nslab.llm.protocol import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from nslab.llm.sequence import SamplingParams

MAX_BODY = 1 << 20  # 1 MiB: far more than any prompt this context holds


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", **kw):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code = kw.get("param"), kw.get("code")


def error_response(status: int, message: str, type_: str, param=None, code=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


async def read_json(request: Request) -> object:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise ApiError(413, f"request body over {MAX_BODY} bytes", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes", code="body_too_large")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        msg = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ApiError(400, f"the body is not valid JSON: {msg}", code="invalid_json") from None


def validated(model, data):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in e["loc"]) or "body"
        raise ApiError(400, f"{where}: {e['msg']}", param=where) from None


class OpenAIServer:
    def __init__(
        self,
        engine: LLMEngine,
        model_name: str | None = None,
        extra_metrics: Callable[[], list[str]] | None = None,
    ):
        self.engine = engine
        self.extra_metrics = extra_metrics  # more Prometheus lines (a remote policy's)
        self.model_name = model_name or engine.name
        self.loop_thread = EngineLoop(engine)
        self.created = int(time.time())
        routes = [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        self.app = Starlette(
            routes=routes,
            exception_handlers={ApiError: self._api_error, HTTPException: self._http_error},
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.loop_thread.start()
        yield
        self.loop_thread.stop()

    # -- errors --------------------------------------------------------------------

    async def _api_error(self, request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code)

    async def _http_error(self, request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    # -- small endpoints -----------------------------------------------------------

    async def health(self, request):
        if self.loop_thread.error is not None:
            return Response(status_code=503)
        return Response(status_code=200)

    async def models(self, request):
        card = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "nslab",
            "max_model_len": self.engine.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(self, request):
        body = self.engine.metrics.render()
        if self.extra_metrics is not None:
            body += "".join(f"{line}\n" for line in self.extra_metrics()).encode()
        return Response(body, media_type="text/plain; version=0.0.4")

    async def tokenize(self, request):
        req = validated(TokenizeRequest, await read_json(request))
        self._check_model(req.model, optional=True)
        if (req.prompt is None) == (req.messages is None):
            raise ApiError(400, "give exactly one of prompt or messages", param="prompt")
        ids = self._chat_ids(req.messages) if req.messages else self._encode(req.prompt)
        return JSONResponse(
            {"tokens": ids, "count": len(ids), "max_model_len": self.engine.max_model_len}
        )

    async def detokenize(self, request):
        req = validated(DetokenizeRequest, await read_json(request))
        self._check_model(req.model, optional=True)
        self._check_ids(req.tokens, "tokens")
        return JSONResponse({"prompt": self.engine.tokenizer.decode(req.tokens)})

    # -- helpers -------------------------------------------------------------------

    def _check_model(self, name: str | None, optional: bool = False) -> None:
        if name is None and optional:
            return
        if name != self.model_name:
            raise ApiError(
                404,
                f"The model `{name}` does not exist. This server serves `{self.model_name}`.",
                param="model",
                code="model_not_found",
            )

    def _check_ids(self, ids: list[int], param: str) -> None:
        vocab = self.engine.model_config.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ApiError(
                400, f"{param}: token id {bad[0]} is outside 0..{vocab - 1}", param=param
            )

    def _encode(self, text: str) -> list[int]:
        return self.engine.tokenizer.encode(text)

    def _chat_ids(self, messages) -> list[int]:
        msgs = [{"role": m.role, "content": m.text()} for m in messages]
        return self._encode(self.engine.tokenizer.chat_prompt(msgs))

    def _params(self, req, prompt_len: int, max_tokens: int | None) -> SamplingParams:
        limit = self.engine.max_model_len
        if prompt_len == 0:
            raise ApiError(400, "the prompt has no tokens", param="prompt")
        if max_tokens is None:
            max_tokens = limit - prompt_len
        if prompt_len + max_tokens > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} in "
                "the completion). Please reduce the length of the messages or completion.",
                param="messages" if isinstance(req, ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=req.stops(),
            ignore_eos=req.ignore_eos,
        )

    def _submit(self, ids: list[int], params: SamplingParams, rid: str) -> asyncio.Queue:
        if self.loop_thread.error is not None:
            raise ApiError(503, "the engine stopped; see the server log", "server_error")
        if self.loop_thread.num_queued() >= self.engine.cfg.max_waiting:
            raise ApiError(
                503,
                f"the server is full ({self.engine.cfg.max_waiting} requests waiting); retry later",
                "server_error",
                code="overloaded",
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StepOutput | None] = asyncio.Queue()
        self.loop_thread.submit(
            ids, params, rid, lambda out: loop.call_soon_threadsafe(queue.put_nowait, out)
        )
        return queue

    async def _events(self, queue: asyncio.Queue, rid: str) -> AsyncIterator[StepOutput]:
        done = False
        try:
            while not done:
                out = await queue.get()
                if out is None:
                    raise ApiError(503, "the engine stopped; see the server log", "server_error")
                done = out.finished
                yield out
        finally:
            if not done:  # the client went away: free its blocks
                self.loop_thread.abort(rid)

    # -- the two generation endpoints ------------------------------------------------

    async def completions(self, request):
        req = validated(CompletionRequest, await read_json(request))
        self._check_model(req.model)
        if isinstance(req.prompt, list):
            self._check_ids(req.prompt, "prompt")
            ids = list(req.prompt)
        else:
            ids = self._encode(req.prompt)
        params = self._params(req, len(ids), req.max_tokens)
        return await self._generate(req, ids, params, chat=False)

    async def chat(self, request):
        req = validated(ChatRequest, await read_json(request))
        self._check_model(req.model)
        ids = self._chat_ids(req.messages)
        params = self._params(req, len(ids), req.max_completion_tokens or req.max_tokens)
        return await self._generate(req, ids, params, chat=True)

    async def _generate(self, req, ids, params, chat: bool):
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        queue = self._submit(ids, params, rid)
        head = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
        }
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            body = self._stream(queue, rid, head, len(ids), chat, usage)
            return StreamingResponse(body, media_type="text/event-stream")
        text, n_out, reason = [], 0, None
        async for out in self._events(queue, rid):
            text.append(out.text_delta)
            n_out += out.new_token is not None
            reason = out.seq.finish_reason
        content = "".join(text)
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": reason}
        return JSONResponse({**head, "choices": [choice], "usage": _usage(len(ids), n_out)})

    async def _stream(self, queue, rid, head, n_prompt, chat, include_usage):
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        extra = {"usage": None} if include_usage else {}

        def chunk(choices, **more) -> bytes:
            obj = {**head, "choices": choices, **extra, **more}
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        def choice(text: str | None, reason: str | None, role: bool = False):
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
            delta = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

        if chat:  # OpenAI opens a chat stream with the role and empty content
            yield chunk([choice(None, None, role=True)])
        n_out = 0
        try:
            async for out in self._events(queue, rid):
                n_out += out.new_token is not None
                if out.finished:
                    if out.text_delta:
                        yield chunk([choice(out.text_delta, None)])
                    yield chunk([choice(None if chat else "", out.seq.finish_reason)])
                elif out.text_delta:
                    yield chunk([choice(out.text_delta, None)])
        except ApiError as exc:
            err = {"error": {"message": exc.message, "type": exc.type, "code": exc.code}}
            yield b"data: " + json.dumps(err).encode() + b"\n\n"
            return
        if include_usage:
            yield chunk([], usage=_usage(n_prompt, n_out))
        yield b"data: [DONE]\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


async def serve(server: OpenAIServer, host: str, port: int, ready_line: bool = True) -> None:
    import uvicorn

    sock = bind(host, port)
    cfg = uvicorn.Config(
        server.app, log_level="warning", access_log=False, timeout_graceful_shutdown=2
    )
    uv = uvicorn.Server(cfg)
    if ready_line:

        async def announce():
            while not uv.started:
                await asyncio.sleep(0.05)
            print(f"READY {sock.getsockname()[1]}", flush=True)

        asyncio.get_running_loop().create_task(announce())
    await uv.serve(sockets=[sock])
