"""Pure translations between OpenAI's chat format and Anthropic's Messages format.

``anthropic_to_chat``: a ``/v1/messages`` request read into the chat body every provider takes;
``anthropic_answers``: chat answers (whole, or chunk by chunk) written back as Anthropic's
message and events.
``chat_to_anthropic``: a chat body sent as an Anthropic request (the ``anthropic`` provider), and
Anthropic's answers read back as chat completions and chunks.

Only the common subset crosses (text, system, multi-turn, tool calls, stop sequences, sampling,
usage); anything else is refused with a 400 ``untranslatable`` naming the field, never dropped.
"""
