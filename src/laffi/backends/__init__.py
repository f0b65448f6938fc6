"""The answering engines, and the chat backends the LLM annotator talks to.

- prefix_sharing.py: in-process decoding with transformers, a batch of prompts packed into one row
  whose shared prefixes run once (`shared_prefix_generate`; the default, generate.share_prefix=true);
  sampling.py: each sampled answer's seeded random stream; local.py: the padded-batch fallback.
- feedback_guided.py: answer, predict the feedback on the answer, take the revised answer it names.
- openai_backend.py: `generate.backend=openai`, the same prompt tokens on an OpenAI-compatible server.
- answering.py: picks the engine a config names (`load_backend`) and answers questions with it,
  appending a record per answer (`answer_questions`): what the generate and evaluate stages call.
- openai_client.py: the official `openai` client with laffi's retry, backoff and timeout policy and
  request/token counters; works against any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama).
- local_chat.py: chat replies from a local transformers model, for the LLM annotator.
- chat.py: what a chat backend takes and gives.

A chat backend (openai_client.OpenAIChat, local_chat.LocalChat) has a `name` (backend and model, part
of the annotator's cache key) and `complete_many(requests)`, which yields (index, Reply | RequestFailed)
as each request finishes.
"""
