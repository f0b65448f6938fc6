"""Ways to get text out of a model besides the in-process transformers path of `laffi.stages.generate`.

- openai_client.py: the official `openai` client with laffi's retry, backoff and timeout policy and
  request/token counters; works against any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama).
- openai_backend.py: `generate.backend=openai`, the generate/evaluate prompts on such a server.
- local_chat.py: chat replies from a local transformers model, for the LLM annotator.

A chat backend (openai_client.OpenAIChat, local_chat.LocalChat) has a `name` (backend and model, part
of the annotator's cache key) and `complete_many(requests) -> list[Reply | RequestFailed]`.
"""
