"""OpenAI's embeddings answer, built from plain vectors (for providers that translate)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any


def encode_vector(values: Sequence[float], encoding_format: str | None) -> list[float] | str:
    """A vector as OpenAI sends it: a list of floats, or with ``base64`` the little-endian float32
    bytes base64-encoded (what the ``openai`` SDK asks for by default and decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return list(values)


def embeddings_answer(
    vectors: Sequence[Sequence[float]], *, model: str, encoding_format: str | None, prompt_tokens: int
) -> dict[str, Any]:
    """The whole ``/v1/embeddings`` answer for ``vectors``, in input order."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode_vector(vector, encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
