"""kiban: the foundation behind an AI product (accounts, billing, a metered AI gateway, RAG)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiban")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
