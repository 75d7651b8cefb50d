"""A fast OpenAI-compatible chat server for benchmarks and tests (no network beyond loopback).

Speaks ``POST /v1/chat/completions`` (non-streamed and streamed as SSE, usage included, the last
chunk carrying ``usage`` when ``stream_options.include_usage`` is set), ``POST /v1/embeddings``
(deterministic vectors from each input's hash, ``dimensions`` long (8 by default), float or
base64, usage = words + 1 per input) and ``GET /v1/models``.

Faults are scripted per request, in order, and consumed one per request (thread-safe)::

    fake = FakeUpstream().start()            # 127.0.0.1, a free port, in a background thread
    fake.script(Fault.error(429, retry_after=1), Fault.error(500))
    ...                                      # the 3rd request succeeds
    fake.stop()

``fake.always = Fault.error(500)`` fails every request once the script is used up (a deployment
that is down); ``reset()`` clears it.

Fault kinds: ``error`` (any status code, optional Retry-After), ``hang`` (sleep before answering),
``cut`` (a stream that stops after N chunks without finishing: the connection is dropped;
``cut(-1)``: after the headers, before any chunk),
``stall`` (a stream that pauses after N chunks, then finishes). ``latency_ms`` delays every answer.

Run alone: ``python tests/fake_upstream.py --port 9100 --latency-ms 0`` (prints its address).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog."


@dataclass(frozen=True)
class Fault:
    kind: str  # "status" | "hang" | "cut" | "stall"
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    after_chunks: int = 0
    body: dict[str, Any] | None = None

    @classmethod
    def error(
        cls, code: int, *, retry_after: float | None = None, body: dict[str, Any] | None = None
    ) -> Fault:
        return cls("status", status=code, retry_after=retry_after, body=body)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        return cls("hang", seconds=seconds)

    @classmethod
    def cut(cls, after_chunks: int) -> Fault:
        return cls("cut", after_chunks=after_chunks)

    @classmethod
    def stall(cls, after_chunks: int, seconds: float) -> Fault:
        return cls("stall", after_chunks=after_chunks, seconds=seconds)


@dataclass
class Received:
    at: float
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeUpstream:
    reply: str = DEFAULT_REPLY
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    cached_tokens: int = 0
    report_usage: bool = True
    # {"name": ..., "arguments": "<json>"}: a request offering tools, not ending with a tool
    # result, is answered with that one tool call (finish_reason "tool_calls").
    tool_call: dict[str, Any] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    keep_requests: bool = True
    always: Fault | None = None  # the fault of every request the script does not cover
    requests: list[Received] = field(default_factory=list)
    _faults: deque[Fault] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    # --- control ---------------------------------------------------------------------------

    def script(self, *faults: Fault) -> FakeUpstream:
        """Queue faults for the next requests (one each, in order)."""
        with self._lock:
            self._faults.extend(faults)
        return self

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.always = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else self.always

    # --- usage, as a real server would count it (deterministically) ------------------------

    @staticmethod
    def prompt_tokens(body: dict[str, Any]) -> int:
        words = 0
        for message in body.get("messages") or []:
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            words += len(str(content or "").split()) + 4
        return words + 3

    def _pieces(self, body: dict[str, Any]) -> list[str]:
        words = self.reply.split(" ")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0:
            words = words[:limit]
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    def _usage(self, body: dict[str, Any], completion: int) -> dict[str, Any]:
        prompt = self.prompt_tokens(body)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt)},
        }

    @staticmethod
    def embedding(text: str, dimensions: int = 8) -> list[float]:
        """The vector this server returns for `text` (unit length)."""
        seed = hashlib.sha256(text.encode()).digest()
        raw = [((seed[i % len(seed)] + i * 37) % 251) / 125.0 - 1.0 for i in range(dimensions)]
        norm = sum(x * x for x in raw) ** 0.5 or 1.0
        return [x / norm for x in raw]

    async def _embeddings(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = orjson.loads(b"".join(chunks))
        if self.keep_requests:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.requests.append(Received(time.monotonic(), body, headers))
        fault = self._next_fault()
        if fault is not None and fault.kind == "status":
            await _json(send, fault.status, {"error": {"message": "fake", "type": "server_error"}})
            return
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dimensions = body.get("dimensions") or 8
        data = []
        for index, text in enumerate(inputs):
            vector = self.embedding(text, dimensions)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(t.split()) + 1 for t in inputs)
        await _json(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    # --- the ASGI app ----------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if scope["method"] == "GET" and path.endswith("/models"):
            fault = self._next_fault()
            if fault is not None and fault.kind == "status":
                await _json(send, fault.status, {"error": {"message": "fake", "code": None}})
                return
            await _json(
                send,
                200,
                {
                    "object": "list",
                    "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}],
                },
            )
            return
        if scope["method"] == "POST" and path.endswith("/embeddings"):
            await self._embeddings(scope, receive, send)
            return
        if scope["method"] != "POST" or not path.endswith("/chat/completions"):
            await _json(
                send,
                404,
                {
                    "error": {
                        "message": "not found",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = orjson.loads(b"".join(chunks))
        if self.keep_requests:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.requests.append(Received(time.monotonic(), body, headers))
        fault = self._next_fault()
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if fault is not None and fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
        if fault is not None and fault.kind == "status":
            headers_out = []
            if fault.retry_after is not None:
                headers_out.append((b"retry-after", str(fault.retry_after).encode()))
            error = fault.body or {
                "error": {
                    "message": f"fake upstream error {fault.status}",
                    "type": "server_error" if fault.status >= 500 else "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
            await _json(send, fault.status, error, headers_out)
            return
        if body.get("stream"):
            await self._stream(send, body, fault)
        else:
            await self._complete(send, body)

    def _calls(self, body: dict[str, Any]) -> list[dict[str, Any]] | None:
        last = (body.get("messages") or [{}])[-1]
        if self.tool_call is None or not body.get("tools") or last.get("role") == "tool":
            return None
        return [{"id": "call_fake1", "type": "function", "function": dict(self.tool_call)}]

    async def _complete(self, send: Any, body: dict[str, Any]) -> None:
        calls = self._calls(body)
        if calls is not None:
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": self._usage(body, 9),
            }
            await _json(send, 200, payload)
            return
        pieces = self._pieces(body)
        text = "".join(pieces)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = (
            "length" if isinstance(limit, int) and limit < len(self.reply.split(" ")) else "stop"
        )
        payload: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "system_fingerprint": "fp_fake",
        }
        if self.report_usage:
            payload["usage"] = self._usage(body, len(pieces))
        await _json(send, 200, payload)

    async def _stream(self, send: Any, body: dict[str, Any], fault: Fault | None) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        include_usage = (
            bool((body.get("stream_options") or {}).get("include_usage")) and self.report_usage
        )
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "system_fingerprint": "fp_fake",
        }
        pieces = self._pieces(body)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = (
            "length" if isinstance(limit, int) and limit < len(self.reply.split(" ")) else "stop"
        )
        events: list[dict[str, Any]] = [
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            }
        ]
        calls = self._calls(body)
        if calls is not None:
            call = calls[0]
            arguments = call["function"]["arguments"]
            first = {
                **call,
                "index": 0,
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            deltas = [first] + [
                {"index": 0, "function": {"arguments": part}}
                for part in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :])
            ]
            events += [
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"tool_calls": [d]}, "finish_reason": None}],
                }
                for d in deltas
            ]
            pieces, finish = ["x"] * 9, "tool_calls"  # 9 completion tokens, as _complete says
        else:
            events += [
                {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                for p in pieces
            ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if include_usage:
            for event in events:
                event["usage"] = None
            events.append({**base, "choices": [], "usage": self._usage(body, len(pieces))})
        for i, event in enumerate(events):
            if fault is not None and i == fault.after_chunks + 1:
                if fault.kind == "cut":
                    # Raising mid-body makes the server drop the connection without the final
                    # chunk: what a crashed upstream or a broken proxy looks like to the client.
                    # The pause lets what was sent arrive first, as tokens of a real stream do
                    # (aiohttp drops bytes that arrive together with the connection's end).
                    await asyncio.sleep(0.05)
                    raise ConnectionAbortedError("fake upstream cut the stream")
                if fault.kind == "stall":
                    await asyncio.sleep(fault.seconds)
            if self.chunk_delay_ms and i:
                await asyncio.sleep(self.chunk_delay_ms / 1000)
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(event) + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    # --- serving -----------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Serve in a background thread on ``host:port`` (port 0: a free one); return self."""
        config = uvicorn.Config(
            self,
            host=self.host,
            port=self.port,
            log_level="critical",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-upstream", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _json(
    send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument(
        "--always-status", type=int, default=None, help="fail every request with this status"
    )
    args = parser.parse_args()
    fake = FakeUpstream(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        keep_requests=False,
        always=None if args.always_status is None else Fault.error(args.always_status),
    )
    config = uvicorn.Config(
        fake, host=args.host, port=args.port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    print(f"fake upstream on http://{args.host}:{args.port}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


if __name__ == "__main__":
    main()
