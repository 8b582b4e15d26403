"""The usage the gateway estimates for a stream cut short, from the events it relayed."""

from __future__ import annotations

import orjson

from gateway_core.estimates import Relayed, cut_stream_usage, output_tokens, text_characters
from gateway_core.pricing import estimate_prompt_tokens
from gateway_core.sse import sse_event
from gateway_core.types import Usage

BODY = {"model": "m", "messages": [{"role": "user", "content": "Say something long, please."}]}


def openai_chunk(delta: dict[str, object]) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    return sse_event(
        orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]})
    )


def anthropic_event(kind: str, data: dict[str, object]) -> bytes:
    return f"event: {kind}\n".encode() + sse_event(orjson.dumps({"type": kind, **data}))


def relayed(*events: bytes) -> Relayed:
    out = Relayed()
    for event in events:
        out.size += len(event)
        out.last = event
    return out


def test_generated_text_is_counted_in_every_dialect_and_event_of_a_write() -> None:
    assert text_characters(openai_chunk({"content": "Hello"})) == 5
    assert text_characters(openai_chunk({"role": "assistant", "content": ""})) == 0
    tool = {"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": '{"city":'}}]}
    assert text_characters(openai_chunk(tool)) == len('{"city":')  # arguments, not the tool's name
    assert text_characters(openai_chunk({"content": "é\n"}) * 3) == 6  # escapes count as characters
    text_delta = {"index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}}
    assert text_characters(anthropic_event("content_block_delta", text_delta)) == 7
    thinking = {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm"}}
    assert text_characters(anthropic_event("content_block_delta", thinking)) == 3
    assert text_characters(b"data: [DONE]\n\ndata: {not json\n\n") == 0


def test_the_answer_is_estimated_from_the_bytes_relayed_at_four_characters_per_token() -> None:
    events = [openai_chunk({"role": "assistant", "content": ""})]
    events += [openai_chunk({"content": "abcd" * 10}) for _ in range(20)]  # 800 characters
    estimate = output_tokens(relayed(*events))
    assert 200 <= estimate <= 210  # the first event, without text, is counted like the others
    assert output_tokens(Relayed()) == 0


def test_what_the_upstream_reported_comes_first_and_estimates_fill_the_rest() -> None:
    events = relayed(*[openai_chunk({"content": "abcd" * 10}) for _ in range(10)])  # 100 tokens
    nothing = cut_stream_usage(BODY, None, Relayed())
    assert nothing is None  # nothing relayed, nothing reported: the reservation stands

    guessed = cut_stream_usage(BODY, None, events)
    assert guessed is not None and guessed.estimated
    assert (guessed.prompt_tokens, guessed.completion_tokens) == (estimate_prompt_tokens(BODY), 100)
    assert guessed.total_tokens == guessed.prompt_tokens + 100

    started = Usage(prompt_tokens=1234, completion_tokens=1, total_tokens=1235, cached_tokens=1000)
    filled = cut_stream_usage(BODY, started, events)  # Anthropic reports the prompt at the start
    assert filled is not None and filled.estimated
    assert (filled.prompt_tokens, filled.completion_tokens, filled.cached_tokens) == (1234, 100, 1000)

    final = Usage(prompt_tokens=50, completion_tokens=300, total_tokens=350)
    assert cut_stream_usage(BODY, final, events) is final  # the upstream's own counts, untouched
    assert not final.estimated
