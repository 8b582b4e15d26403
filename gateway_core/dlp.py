"""What a data-loss-prevention filter implements."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from gateway_core.providers import NoOptions
from gateway_core.types import RequestContext


class DlpFilter:
    """Inspects and rewrites request bodies and response text.

    One instance is built per configured use at start-up with its options validated against
    :attr:`Options`. ``filter_request`` may change ``body`` in place and returns whether it did (so
    the core knows the client's bytes can no longer be forwarded as they are); it raises
    :class:`~gateway_core.GatewayError` to block the request. ``filter_text`` rewrites one piece of
    response text (a whole answer or one streamed delta).
    """

    name: ClassVar[str] = ""
    #: Pydantic model of the filter's options.
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    async def filter_request(self, ctx: RequestContext, body: dict[str, Any]) -> bool:
        return False

    def filter_text(self, ctx: RequestContext, text: str) -> str:
        return text
