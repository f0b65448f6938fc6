"""OpenAIGenerator (generate.backend=openai) against a real HTTP server: when one request fails for good,
the answers that already arrived are handed to the stage before the error, so a rerun asks only for the rest."""

import pytest
from support.fault_server import FaultServer

from laffi.backends.chat import RequestFailed
from laffi.backends.openai_backend import OpenAIGenerator
from laffi.config import load_config


def test_answers_that_arrived_before_a_failure_are_yielded_then_the_failure_raised(tiny_model_dir):
    from transformers import AutoTokenizer

    def completions(body):
        if body["prompt"][-1] == 3:  # question q3: refused for good
            return 400, {"error": {"message": "bad prompt"}}
        return 200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "text": " x\n", "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 2, "total_tokens": 0}}

    prompts = {f"q{i}": [5, 6, i] for i in range(5)}
    received = []
    with FaultServer(lambda item, n: "ok", completions=completions) as server:
        config = load_config(overrides=["generate.backend=openai", f"generate.base_url={server.url}",
                                        "generate.retries=0"])
        generator = OpenAIGenerator.from_config(config.model, config.generate,
                                                AutoTokenizer.from_pretrained(tiny_model_dir))
        with pytest.raises(RequestFailed, match=r"generate.base_url http://.*, question 'q3' \(3 prompt tokens, "
                                                r"generate.max_new_tokens 4\): HTTP 400: .*bad prompt"):
            for batch in generator.greedy_batches(prompts, 8, 4, ["\n"]):  # a batch the five never fill
                received.extend(g.id for g in batch)
    assert sorted(received) == ["q0", "q1", "q2", "q4"]
