"""Stopping at the end of the line by token ids answers exactly as generate(stop_strings=["\\n"])."""

import torch
from transformers import AutoTokenizer, StopStringCriteria

from laffi.backends.local import greedy_generate, tokens_containing
from support.newline_model import newline_prone_model


def test_newline_tokens_are_the_ones_stop_strings_stops_on(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tokenizer)
    # every token after an "a": does HF's criterion end the sequence there?
    a = tokenizer("a", add_special_tokens=False)["input_ids"][0]
    sequences = torch.stack([torch.full((vocab,), a), torch.arange(vocab)], dim=1)
    stopped = StopStringCriteria(tokenizer, ["\n"])(sequences, None).nonzero().flatten().tolist()
    ids = tokens_containing(tokenizer, ["\n"])
    assert ids and sorted(stopped) == ids  # "\n" alone, "\n\n", ".\n", "\n   " ...


def test_greedy_generate_matches_hf_stop_strings(tiny_model_dir):
    model, tokenizer = newline_prone_model(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    prompts = {f"q{i}": torch.randint(100, 5000, (n,), generator=generator).tolist()
               for i, n in enumerate((5, 9, 9, 14, 3, 20))}

    ours = {g.id: g for batch in greedy_generate(model, tokenizer, prompts, 3, 12, ["\n"]) for g in batch}
    for question_id, ids in prompts.items():
        output = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                do_sample=False, max_new_tokens=12, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id, stop_strings=["\n"], tokenizer=tokenizer)
        new = output[0, len(ids):].tolist()
        assert ours[question_id].text == tokenizer.decode(new, skip_special_tokens=True)
        assert ours[question_id].new_tokens == len(new)  # the tokens up to the stop, no padding
    lengths = [g.new_tokens for g in ours.values()]
    assert min(lengths) < 12 == max(lengths)  # rows stop early (some while their batch runs on) or run to the limit
