"""A misbehaving OpenAI-compatible engine on 127.0.0.1, for the remote backend's failure tests.

Raw HTTP/1.1 over asyncio streams, on a thread of its own, so each failure is exactly what the test asks
for: a hang, a stream dropped midway, malformed JSON, a status code, a slow first byte, an endless stream.
It records every request and notices when a client closes a connection in the middle of a stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

# One behaviour per request: ok | hang | drop | malformed | slow | endless | queued | status:<code>
# `queued` is a single-slot engine (llama.cpp's Python server): headers at once, then one request at a time, each
# with a prefill of `prefill_s` during which a closed connection goes unnoticed.
DEFAULT_PIECES = ("    return", " a", " +", " b", "\n")


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class FakeEngine:
    behaviour: str = "ok"
    pieces: tuple[str, ...] = DEFAULT_PIECES
    piece_delay_s: float = 0.0
    slow_s: float = 30.0  # how long `slow` waits before its first byte
    prefill_s: float = 1.0  # `queued`: the time before a request's first piece, with the slot held
    prefills: int = 0  # `queued`: prefills run, whether or not their client still listened
    # The first token's alternatives (text -> logprob), sent with the first piece when a request asks `logprobs`.
    top_logprobs: dict[str, float] = field(default_factory=dict)
    retry_after: int = 0  # the Retry-After of 429 and 503 answers
    script: list[str] = field(default_factory=list)  # behaviours for the next requests, then `behaviour`
    requests: list[SeenRequest] = field(default_factory=list)
    connections: int = 0
    # Set when a client closed its connection while this engine was still streaming to it.
    stream_abandoned: threading.Event = field(default_factory=threading.Event)
    abandoned_at: float | None = None

    def start(self) -> "FakeEngine":
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()

        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-engine", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop)
        started.wait(5)
        return self

    def stop(self) -> None:
        async def shutdown():
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- one connection, possibly several requests (keep-alive) ------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in header_lines if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(SeenRequest(request_line.split()[1], headers, json.loads(body or b"{}")))
                behaviour = self.script.pop(0) if self.script else self.behaviour
                if not await self._answer(behaviour, headers, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, behaviour: str, headers: dict[str, str], reader, writer) -> bool:
        """Answers one request; False when the connection must end."""
        if behaviour.startswith("status:"):
            code = int(behaviour.split(":")[1])
            # Echoes the Authorization header, as a careless proxy might: the client must not repeat it.
            payload = json.dumps({"error": {"message": f"fake engine says {code}",
                                            "echo": headers.get("authorization", "")}}).encode()
            extra = f"Retry-After: {self.retry_after}\r\n" if code in (429, 503) else ""
            writer.write(f"HTTP/1.1 {code} Fake\r\nContent-Type: application/json\r\n{extra}"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            await writer.drain()
            return True
        if behaviour == "hang":
            await reader.read()  # until the client gives up
            return False
        if behaviour == "slow":
            await asyncio.sleep(self.slow_s)
            behaviour = "ok"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        if behaviour == "queued":
            await writer.drain()
            if not hasattr(self, "_slot"):
                self._slot = asyncio.Lock()  # made on the engine's loop
            async with self._slot:
                await asyncio.sleep(self.prefill_s)
                self.prefills += 1
                return await self._stream(reader, writer, endless=False)
        if behaviour == "malformed":
            await self._chunk(writer, b"data: {\"choices\": [{\"text\": \"oops\"\n\n")
            await self._chunk(writer, b"")
            return True
        if behaviour == "drop":
            for piece in self.pieces[:2]:
                await self._chunk(writer, _event(piece))
            writer.transport.abort()  # mid-body, no terminating chunk
            return False
        return await self._stream(reader, writer, endless=behaviour == "endless")

    async def _stream(self, reader, writer, endless: bool) -> bool:
        pieces = iter(self.pieces) if not endless else iter(lambda: " x", None)
        wants_logprobs = bool(self.requests and self.requests[-1].body.get("logprobs"))
        try:
            for index, piece in enumerate(pieces):
                # The client closed its side while we still stream: it abandoned the answer.
                if reader.at_eof():
                    self.abandoned_at = time.monotonic()
                    self.stream_abandoned.set()
                    return False
                logprobs = None
                if index == 0 and wants_logprobs:
                    logprobs = {"tokens": [piece], "token_logprobs": [self.top_logprobs.get(piece, -0.1)],
                                "top_logprobs": [self.top_logprobs or {piece: -0.1}]}
                await self._chunk(writer, _event(piece, logprobs=logprobs))
                await asyncio.sleep(0.05 if endless else self.piece_delay_s)
            await self._chunk(writer, _event("", "stop"))
            await self._chunk(writer, b"data: [DONE]\n\n")
            await self._chunk(writer, b"")
        except ConnectionError:
            self.abandoned_at = time.monotonic()
            self.stream_abandoned.set()
            return False
        return True

    @staticmethod
    async def _chunk(writer, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()


def _event(text: str, finish: str | None = None, logprobs: dict | None = None) -> bytes:
    chunk = {"id": "cmpl-fake", "object": "text_completion", "model": "fake",
             "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()
