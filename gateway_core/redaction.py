"""Keeping the gateway's secrets out of what clients read.

Upstreams sometimes quote the request in their error messages (a proxy echoing the headers, a server
naming the key it refused). Every error the gateway builds from an upstream's answer is rebuilt from
its message, type, code and param only, and those go through a :class:`Redactor` first: it replaces
each configured secret (the deployment's API keys and credentials, its proxies' passwords, its extra
header values, every value the configuration took from the environment or a file) with
:data:`MARKER`. Values shorter than :data:`MIN_SECRET_LENGTH` are not treated as secrets: replacing
them would mangle ordinary words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from gateway_core.errors import GatewayError

MARKER = "[redacted]"
MIN_SECRET_LENGTH = 8
#: Request headers that carry credentials.
_CREDENTIAL_HEADER = re.compile(r"(?i)auth|key|token|secret|cookie|signature")


class Redactor:
    """Replaces known secret values in text; built once per deployment, applied on error paths only."""

    __slots__ = ("_pattern", "secrets")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        found = {value for value in secrets if value and len(value) >= MIN_SECRET_LENGTH}
        #: The secret values, longest first (a key containing another is replaced whole).
        self.secrets: tuple[str, ...] = tuple(sorted(found, key=len, reverse=True))
        self._pattern = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MARKER, text)

    def including(self, headers: Mapping[str, str]) -> Redactor:
        """This redactor plus the credentials among ``headers`` (those of the request an error answer
        came to: a token fetched at run time, such as an OAuth access token, is in no configuration)."""
        values = [value for name, value in headers.items() if _CREDENTIAL_HEADER.search(name)]
        return Redactor([*self.secrets, *header_secrets(values)]) if values else self

    def error(self, error: GatewayError) -> GatewayError:
        """Scrub ``error``'s message, type, code and param in place; return it."""
        if self._pattern is not None:
            error.message = self(error.message)
            error.args = (error.message,)
            error.type = self(error.type)
            if error.code is not None:
                error.code = self(error.code)
            if error.param is not None:
                error.param = self(error.param)
        return error


def header_secrets(values: Iterable[str]) -> list[str]:
    """Header values and, for ``Scheme token`` values (``Bearer sk-...``), the token alone."""
    out: list[str] = []
    for value in values:
        out.append(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.isalpha():
            out.append(token.strip())
    return out


def url_secrets(url: str) -> list[str]:
    """The user name and password of a URL (a proxy's ``http://user:password@host``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    return [unquote(value) for value in (parts.password, parts.username) if value]
