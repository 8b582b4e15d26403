"""Fake upstream providers served on 127.0.0.1 for end-to-end tests."""

from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.fakes.server import RecordedRequest

__all__ = ["Behaviour", "FakeOpenAI", "RecordedRequest"]
