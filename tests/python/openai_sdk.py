"""Drives keel's gateway with the official OpenAI Python SDK, unmodified: a streamed chat
completion and an embeddings call (the SDK's default base64 encoding). Prints one JSON object
with what it saw; exits non-zero on any error. OPENAI_BASE_URL and OPENAI_API_KEY come from
the environment (the gateway's /v1 and a keel access token)."""

import json
import sys

from openai import OpenAI

client = OpenAI()

stream = client.chat.completions.create(
    model="keel-tiny",
    messages=[{"role": "user", "content": "hello from the sdk"}],
    max_tokens=12,
    temperature=0,
    stream=True,
)
text, chunks, finish = "", 0, None
for chunk in stream:
    chunks += 1
    choice = chunk.choices[0]
    if choice.delta.content:
        text += choice.delta.content
    if choice.finish_reason:
        finish = choice.finish_reason

plain = client.chat.completions.create(
    model="keel-tiny",
    messages=[{"role": "user", "content": "hello from the sdk"}],
    max_tokens=12,
    temperature=0,
)

emb = client.embeddings.create(model="keel-embed", input=["a cat sat", "a cat sat down"])
vectors = [d.embedding for d in emb.data]

models = [m.id for m in client.models.list()]

try:
    client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    missing = None
except Exception as e:  # the SDK raises its NotFoundError
    missing = type(e).__name__

json.dump(
    {
        "streamed_text": text,
        "chunks": chunks,
        "finish_reason": finish,
        "plain_text": plain.choices[0].message.content,
        "usage_completion": plain.usage.completion_tokens,
        "embedding_dims": [len(v) for v in vectors],
        "models": models,
        "missing_model_error": missing,
    },
    sys.stdout,
)
