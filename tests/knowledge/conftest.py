"""Helpers for the knowledge tests: searching through the real HTTP API, a minimal PDF."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


async def search(
    client: httpx.AsyncClient, headers: dict[str, str], query: str, top_k: int = 5
) -> dict[str, Any]:
    """POST /documents/search and return the body (asserting 200)."""
    response = await client.post(
        "/documents/search", headers=headers, json={"query": query, "top_k": top_k}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def minimal_pdf() -> bytes:
    """A one-page PDF with a real text layer (built by hand: offsets and xref are exact)."""
    text = "Refunds are processed within 14 days of the request."
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out
