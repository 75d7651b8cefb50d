"""A fake Anthropic Messages API server for tests (loopback only), beside ``fake_upstream.py``.

Speaks ``POST /v1/messages``, JSON and SSE (``message_start``, ``content_block_*`` with
``text_delta`` and ``input_json_delta``, ``message_delta`` with the stop reason and the usage,
``message_stop``, a ``ping``), and checks what Anthropic checks: the ``x-api-key`` (when ``key``
is set), ``anthropic-version``, ``max_tokens``, a non-empty ``messages`` of user/assistant turns
with non-empty text blocks. Usage is counted deterministically (words + 3 per message), and
``cache_read``/``cache_write`` are reported as Anthropic reports them (apart from
``input_tokens``).

With ``tool_use`` set (``{"name": ..., "input": {...}}``), a request that offers tools and does not
end with a tool result is answered with a short text and that tool call (``stop_reason``
``tool_use``); a tool result is answered with text.

Faults are ``tests.fake_upstream.Fault``: ``error`` (status, ``retry-after``, Anthropic's error
body), ``hang``, ``cut`` (the connection dropped after N events), ``stall``; and
``stream_error`` events via ``Fault.error`` with ``body={"stream_error": "overloaded_error"}``.

Run alone: ``python tests/fake_anthropic.py --port 9200`` (prints its address; any key accepted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

from tests.fake_upstream import DEFAULT_REPLY, Fault, Received, _json

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_text(block.get("content")))
        elif block.get("type") == "tool_use":
            parts.append(orjson.dumps(block.get("input")).decode())
    return " ".join(parts)


MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")  # what GET /v1/models lists


@dataclass
class FakeAnthropic:
    reply: str = DEFAULT_REPLY
    key: str | None = "sk-ant-test"
    cache_read: int = 0
    cache_write: int = 0
    tool_use: dict[str, Any] | None = None
    chunk_delay_ms: float = 0.0
    host: str = "127.0.0.1"
    port: int = 0
    keep_requests: bool = True
    requests: list[Received] = field(default_factory=list)
    _faults: deque[Fault] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def script(self, *faults: Fault) -> FakeAnthropic:
        with self._lock:
            self._faults.extend(faults)
        return self

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
        self.reply = DEFAULT_REPLY
        self.cache_read = self.cache_write = 0
        self.tool_use = None
        self.chunk_delay_ms = 0.0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    @staticmethod
    def input_tokens(body: dict[str, Any]) -> int:
        """What this server counts as the prompt (the uncached part is ``input_tokens``)."""
        words = len(_text(body.get("system") or "").split())
        for message in body.get("messages") or []:
            words += len(_text(message.get("content")).split()) + 3
        return words + 3

    def _usage(self, body: dict[str, Any], output: int) -> dict[str, int]:
        total = self.input_tokens(body)
        return {
            "input_tokens": max(total - self.cache_read - self.cache_write, 0),
            "output_tokens": output,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
        }

    def _plan(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, int]:
        """The answer's blocks, its stop reason and its output tokens."""
        last = (body.get("messages") or [{}])[-1]
        answered = isinstance(last.get("content"), list) and any(
            b.get("type") == "tool_result" for b in last["content"]
        )
        if self.tool_use is not None and body.get("tools") and not answered:
            blocks = [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_fake1", **self.tool_use},
            ]
            return blocks, "tool_use", 12
        words = self.reply.split(" ")
        limit = body["max_tokens"]
        reason = "max_tokens" if limit < len(words) else "end_turn"
        words = words[:limit]
        return [{"type": "text", "text": " ".join(words)}], reason, len(words)

    def _refusal(self, headers: dict[str, str], body: Any) -> tuple[int, str] | None:
        if self.key is not None and headers.get("x-api-key") != self.key:
            return 401, "invalid x-api-key"
        if not headers.get("anthropic-version"):
            return 400, "anthropic-version: header is required"
        if not isinstance(body, dict) or not isinstance(body.get("max_tokens"), int):
            return 400, "max_tokens: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, "messages: at least one message is required"
        for message in messages:
            if message.get("role") not in ("user", "assistant"):
                return 400, f"messages: unexpected role {message.get('role')!r}"
            content = message.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for block in blocks:
                if block.get("type") == "text" and not block.get("text"):
                    return 400, "messages: text content blocks must be non-empty"
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["method"] == "GET" and scope["path"] == "/v1/models":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if self.key is not None and headers.get("x-api-key") != self.key:
                await _error(send, 401, "invalid x-api-key")
                return
            listed = [{"type": "model", "id": m, "display_name": m} for m in MODELS]
            await _json(send, 200, {"data": listed, "has_more": False})
            return
        if scope["method"] != "POST" or scope["path"] != "/v1/messages":
            await _error(send, 404, "not found")
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = orjson.loads(b"".join(chunks))
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.keep_requests:
            self.requests.append(Received(time.monotonic(), body, headers))
        refusal = self._refusal(headers, body)
        if refusal is not None:
            await _error(send, *refusal)
            return
        fault = self._next_fault()
        if fault is not None and fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
        if (
            fault is not None
            and fault.kind == "status"
            and not (fault.body or {}).get("stream_error")
        ):
            extra = []
            if fault.retry_after is not None:
                extra.append((b"retry-after", str(fault.retry_after).encode()))
            await _error(send, fault.status, f"fake anthropic error {fault.status}", extra)
            return
        if body.get("stream"):
            await self._stream(send, body, fault)
            return
        blocks, reason, output = self._plan(body)
        await _json(
            send,
            200,
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": blocks,
                "stop_reason": reason,
                "stop_sequence": None,
                "usage": self._usage(body, output),
            },
        )

    def _events(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        blocks, reason, output = self._plan(body)
        usage = self._usage(body, output)
        start = {**usage, "output_tokens": 1}
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "message": {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start,
                    }
                },
            ),
            ("ping", {}),
        ]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(
                    (
                        "content_block_start",
                        {"index": index, "content_block": {"type": "text", "text": ""}},
                    )
                )
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    events.append(
                        (
                            "content_block_delta",
                            {"index": index, "delta": {"type": "text_delta", "text": piece}},
                        )
                    )
            else:
                events.append(
                    (
                        "content_block_start",
                        {"index": index, "content_block": {**block, "input": {}}},
                    )
                )
                encoded = orjson.dumps(block["input"]).decode()
                middle = len(encoded) // 2
                for part in (encoded[:middle], encoded[middle:]):
                    events.append(
                        (
                            "content_block_delta",
                            {
                                "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": part},
                            },
                        )
                    )
            events.append(("content_block_stop", {"index": index}))
        # message_delta's usage is cumulative; like Anthropic's, it repeats only output_tokens.
        events.append(
            (
                "message_delta",
                {
                    "delta": {"stop_reason": reason, "stop_sequence": None},
                    "usage": {"output_tokens": output},
                },
            )
        )
        events.append(("message_stop", {}))
        return events

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
        for i, (name, data) in enumerate(self._events(body)):
            if fault is not None and i == fault.after_chunks + 1:
                if fault.kind == "cut":
                    await asyncio.sleep(0.05)
                    raise ConnectionAbortedError("fake anthropic cut the stream")
                if fault.kind == "stall":
                    await asyncio.sleep(fault.seconds)
                if fault.kind == "status":
                    kind = (fault.body or {})["stream_error"]
                    error = {"type": "error", "error": {"type": kind, "message": "Overloaded"}}
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"event: error\ndata: " + orjson.dumps(error) + b"\n\n",
                            "more_body": False,
                        }
                    )
                    return
            if self.chunk_delay_ms and i:
                await asyncio.sleep(self.chunk_delay_ms / 1000)
            payload = orjson.dumps({"type": name, **data})
            await send(
                {
                    "type": "http.response.body",
                    "body": b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def start(self) -> FakeAnthropic:
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
        self._thread = threading.Thread(target=self._server.run, name="fake-anthropic", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake anthropic did not start")
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


async def _error(
    send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    kind = ERROR_TYPES.get(status, "api_error")
    await _json(
        send, status, {"type": "error", "error": {"type": kind, "message": message}}, headers
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    args = parser.parse_args()
    fake = FakeAnthropic(host=args.host, port=args.port, key=None, keep_requests=False)
    config = uvicorn.Config(
        fake, host=args.host, port=args.port, log_level="warning", access_log=False
    )
    print(f"fake anthropic on http://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
