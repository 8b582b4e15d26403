"""Wire formats other than OpenAI's, as pure functions over plain dicts.

The canonical form inside the gateway is OpenAI's: a chat request is an OpenAI
``/v1/chat/completions`` body, an answer an OpenAI ``chat.completion`` object and a stream a
sequence of ``chat.completion.chunk`` objects (the last one carrying ``usage`` with empty
``choices``). Each dialect module translates between that form and its own, with no I/O:

* towards a provider: ``encode_chat_request``, ``decode_chat_response``, a ``StreamDecoder``
  (provider SSE events in, canonical chunks out) and the embeddings pair where the provider has one;
* from a client (the Anthropic ``/v1/messages`` endpoint): ``decode_messages_request``,
  ``encode_messages_response``, a ``MessagesStreamEncoder`` (canonical chunks in, the dialect's
  SSE events out) and ``encode_error``.

What a provider cannot express raises a 400 ``GatewayError`` naming the parameter, unless the
operator set ``drop_params``, in which case the parameter is dropped.
"""
