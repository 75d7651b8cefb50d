"""The AI surfaces: each wire format read into an ``Intent`` and its answer written back.

``ask`` is kiban's own JSON and SSE (``/ai/test``, ``/ai/stream``); ``openai_chat`` is OpenAI's
chat completions (``/v1/chat/completions``), ``embeddings`` its embeddings (``/v1/embeddings``),
``anthropic_messages`` Anthropic's Messages API (``/v1/messages``); ``body`` holds the checks
every JSON surface makes first. The steps between (``kiban.gateway.flow``) are shared.
"""
