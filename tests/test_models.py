"""The embedded model: converted once from its GGUF, then loaded from the cache and used."""

import os
import re
import subprocess
import sys
import time
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from laffi.backends.local import greedy_generate
from laffi.config import ConfigError, ModelConfig, TrainConfig
from laffi.models import load_model, pick_attention, pick_device, pick_dtype, quiet_peft, resolve_model_path
from laffi.prompts import extract_answer, prompt_ids, qa_messages
from laffi.records import QAExample, read_records


@pytest.mark.slow
def test_embedded_model_converts_once_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("LAFFI_CACHE", str(tmp_path))
    path = resolve_model_path("embedded")
    assert path.startswith(str(tmp_path))
    started = time.perf_counter()
    assert resolve_model_path("embedded") == path  # cached: no second conversion
    assert time.perf_counter() - started < 1

    model, tokenizer = load_model(ModelConfig(prompt_format="plain"))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    shot = QAExample("s", "Moon", "The Moon orbits the Earth every 27 days.", "What orbits the Earth?", ["The Moon"])
    question = QAExample("q", "France", "Paris is the capital and largest city of France.",
                         "What is the capital of France?", ["Paris"])
    prompts = {"q": prompt_ids(tokenizer, qa_messages(question, [shot]))}
    (generation,), = greedy_generate(model, tokenizer, prompts, batch_size=1, max_new_tokens=8, stop_strings=["\n"])
    assert extract_answer(generation.text) == "Paris"


def test_device_and_dtype_choice(monkeypatch):
    import laffi.models as models

    cpu = pick_device("cpu")
    assert cpu.type == "cpu"
    assert pick_dtype("auto", cpu) == (torch.bfloat16 if models.cpu_has_bf16() else torch.float32)
    for has_bf16, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_has_bf16", lambda: has_bf16)
        assert pick_dtype("auto", cpu) == dtype
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16 and pick_dtype("float32", cpu) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a CUDA GPU")
def test_a_device_this_machine_lacks_is_named(tiny_model_dir):
    from laffi.models import answered_as_now

    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"model.device={device}: torch sees no CUDA GPUs here"):
            load_model(ModelConfig(name=str(tiny_model_dir), device=device))
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="model.device=mps: torch has no MPS device here"):
            load_model(ModelConfig(name=str(tiny_model_dir), device="mps"))
    # what answers made on a GPU say is read without one (an experiment's summary rebuilt on a CPU)
    assert answered_as_now({"adapter": "x", "answering": 2}, ModelConfig(device="cuda", dtype="bfloat16"))
    with pytest.raises(ConfigError, match="model.device: must be auto, cpu, cuda"):
        ModelConfig(device="cuda:x")


def test_attention_kernel_choice(tiny_model_dir):
    cpu = pick_device("cpu")
    path = str(tiny_model_dir)
    assert pick_attention("auto", path, cpu, torch.float32) is None  # flash attention needs CUDA and 16-bit weights
    with pytest.raises(ConfigError, match=r"model\.attention=flash_attention_2: needs a CUDA GPU"):
        pick_attention("flash_attention_2", path, cpu, torch.bfloat16)
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), attention="eager"))
    assert model.config._attn_implementation == "eager"
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    assert model.config._attn_implementation == "sdpa"


def test_auto_attention_on_a_gpu_with_flash_attn_picks_it_where_the_architecture_has_it(tiny_model_dir, monkeypatch):
    import laffi.models as models

    monkeypatch.setattr(models, "is_flash_attn_2_available", lambda: True)  # as on a CUDA machine with flash-attn
    cuda = torch.device("cuda")
    assert pick_attention("auto", str(tiny_model_dir), cuda, torch.bfloat16) == "flash_attention_2"  # Llama has it
    assert pick_attention("auto", str(tiny_model_dir), cuda, torch.float32) is None


def test_missing_gguf_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        resolve_model_path(str(tmp_path / "nothing.gguf"))


def test_a_folder_or_file_that_is_no_model_is_named_once(tiny_model_dir, tmp_path):
    from laffi.models import load_tokenizer

    (tmp_path / "notes.json").write_text("{}")
    for name, what in ((tmp_path, "a folder without a model"), (tmp_path / "notes.json", "a file")):
        with pytest.raises(ConfigError, match=f"^model.name: {name} is {what}.*; give a model's folder") as refused:
            load_tokenizer(ModelConfig(name=str(name)))  # not transformers' advice to install sentencepiece
        assert str(refused.value).count("model.name") == 1
    tokenizer_only = tmp_path / "tokenizer"  # generate.backend=openai: the model is the server's, the tokenizer here
    load_tokenizer(ModelConfig(name=str(tiny_model_dir))).save_pretrained(tokenizer_only)
    assert load_tokenizer(ModelConfig(name=str(tokenizer_only))).chat_template


@pytest.mark.slow
def test_embedded_model_answers_held_out_prompts_alike_with_and_without_prefix_sharing(tmp_path):
    """24 held-out questions of 2 articles, with the default preset's prompts: in fp32 the shared-prefix
    engine gives the answers of padded batches. (In bf16 the two round differently and some answers
    differ; `make bench` reports how many.)"""
    dtype = "float32"
    from laffi.backends.answering import build_prompts
    from laffi.backends.prefix_sharing import shared_prefix_generate
    from laffi.config import load_config
    from laffi.layout import RunLayout
    from laffi.stages.prepare import prepare

    config = load_config(overrides=[f"model.dtype={dtype}"])
    _, held_out = prepare(RunLayout(tmp_path), config.data)
    articles = sorted({e.title for e in held_out})[:2]
    examples = [e for e in held_out if e.title in articles][:24]
    model, tokenizer = load_model(config.model)
    prompts = build_prompts(tokenizer, examples, read_records(RunLayout(tmp_path).shots, QAExample), config.data)
    padded = {g.id: g.text for batch in greedy_generate(model, tokenizer, prompts, 8, 24, ["\n"]) for g in batch}
    shared = {g.id: g.text for batch in shared_prefix_generate(model, tokenizer, prompts, 8, 24, ["\n"])
              for g in batch}
    assert shared == padded


@pytest.mark.parametrize("dtype, merged", [("float32", True), ("bfloat16", False)])
def test_an_adapter_is_merged_only_into_fp32_weights(tiny_model_dir, tmp_path, dtype, merged):
    """In bf16, adding a small trained update to the weights rounds most of it away; beside them it is kept."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    with quiet_peft():
        lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                              LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # a trained-sized update: about 0.3% of the weights it adds to
            torch.nn.init.normal_(p, std=2e-3)
    lora.save_pretrained(tmp_path / "adapter")
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), dtype=dtype), adapter=tmp_path / "adapter")
    assert isinstance(model, PeftModel) != merged
    ids = torch.tensor([[5, 60, 700, 8000, 90]])
    with torch.no_grad(), quiet_peft():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=getattr(torch, dtype))
        beside = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        expected, got = beside(ids).logits.float(), model(ids).logits.float()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_an_adapter_trained_on_a_model_of_other_sizes_is_refused_naming_both(tiny_model_dir, tmp_path):
    """A run built stage by stage keeps no model.name between commands: left off one of them, the adapter meets
    another model, and PEFT's size mismatch becomes an error that says what happened."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoTokenizer

    with quiet_peft():
        get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                       LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.hidden_size = 48
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "wider")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "wider")
    with pytest.raises(ConfigError, match=rf"does not fit model.name={re.escape(str(tmp_path / 'wider'))}; it was "
                                          rf"trained on {re.escape(str(tiny_model_dir))}.*give every stage the same"):
        load_model(ModelConfig(name=str(tmp_path / "wider")), adapter=tmp_path / "adapter")


def test_loading_a_model_caps_onednn_kernel_cache_so_new_shapes_evict_old_ones(tiny_model_dir):
    """300 bf16 matmul shapes, twice: with oneDNN's default cache (1,024) the second pass finds every kernel
    compiled; capped at 256 by load_model, the first pass's kernels are gone, so every shape compiles again."""
    script = f"""
import torch
from laffi.config import ModelConfig
from laffi.models import load_model
load_model(ModelConfig(name={str(tiny_model_dir)!r}, dtype="bfloat16"))
weight = torch.randn(64, 64, dtype=torch.bfloat16)
for _ in range(2):
    for rows in range(1, 301):
        torch.nn.functional.linear(torch.randn(rows, 64, dtype=torch.bfloat16), weight)
"""
    env = {key: value for key, value in os.environ.items() if key != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    done = subprocess.run([sys.executable, "-c", script], env={**env, "ONEDNN_VERBOSE": "profile_create"},
                          capture_output=True, text=True, timeout=300, check=True)
    compiled = done.stdout.count("create:cache_miss")
    if compiled == 0:
        pytest.skip("this CPU runs bf16 matmuls without oneDNN")
    # uncapped: one kernel a shape, at most 300 (a single row takes another path); capped: nearly two
    assert compiled > 400, f"{compiled} kernels compiled for 300 shapes run twice: the cache kept them"


def test_adding_lora_and_loading_an_adapter_print_no_deprecation_notice_of_peft_s_making(tiny_model_dir, tmp_path):
    from laffi.stages.train import add_lora
    config = ModelConfig(name=str(tiny_model_dir), dtype="float32")
    with warnings.catch_warnings(record=True) as caught:  # entering resets the once-per-place registry
        warnings.simplefilter("always")
        add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config, TrainConfig()).save_pretrained(tmp_path)
        load_model(config, adapter=tmp_path)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_under_fsdp_or_deepspeed_the_model_loads_on_the_cpu_but_is_chosen_for_the_process_s_gpu(tiny_model_dir):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from laffi.stages.train import model_device, sharded

    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MULTI_GPU):
        process = SimpleNamespace(distributed_type=kind, device=torch.device("cuda", 3))
        # the dtype and attention kernel follow cuda:3 (bf16, FlashAttention-2), not the host CPU's
        assert model_device(process, ModelConfig()) == "cuda:3"
        assert sharded(process) == (kind != DistributedType.MULTI_GPU)
    with pytest.raises(ConfigError, match="load_in_4bit: QLoRA trains on one GPU or under DDP"):
        load_model(ModelConfig(name=str(tiny_model_dir), load_in_4bit=True), on_cpu=True)
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)), on_cpu=True)  # on a CPU: as without it
    assert next(model.parameters()).device.type == "cpu"


def test_a_name_transformers_cannot_find_is_named_but_a_system_error_is_not_called_a_wrong_name():
    import errno

    from laffi.models import named_by_model_name

    config = ModelConfig(name="nosuch-org/nosuch-model")
    with pytest.raises(ConfigError, match="model.name=nosuch-org/nosuch-model: not a valid model identifier"):
        with named_by_model_name(config):
            raise OSError("not a valid model identifier")  # how transformers says it: no errno
    with pytest.raises(OSError, match="No space left") as raised:
        with named_by_model_name(config):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not isinstance(raised.value, ConfigError)


def test_two_ggufs_of_one_name_or_a_gguf_replaced_in_place_never_share_a_conversion(tmp_path, monkeypatch):
    from laffi.models import converted_folder

    monkeypatch.setenv("LAFFI_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "a" / "ggml-model-Q4_K_M.gguf", tmp_path / "b" / "ggml-model-Q4_K_M.gguf"
    for path, content in ((first, b"one model"), (second, b"another one")):
        path.parent.mkdir()
        path.write_bytes(content)
    folder = converted_folder(first)
    assert folder.name.startswith("ggml-model-Q4_K_M-") and folder == converted_folder(first)
    assert converted_folder(second) != folder
    first.write_bytes(b"one model, requantised")
    assert converted_folder(first) != folder


MISTRAL_V03_LIKE = (  # the system message goes into the last user turn only, as Mistral-7B-Instruct-v0.3's does
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)


def test_a_chat_template_training_cannot_use_is_refused_before_answering_for_training(tiny_model_dir, tmp_path):
    import shutil

    from laffi.cli import main
    from laffi.models import check_trainable, load_tokenizer

    model = tmp_path / "mistral-like"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(MISTRAL_V03_LIKE)
    chat = ModelConfig(name=str(model), prompt_format="chat")
    with pytest.raises(ConfigError, match="model.prompt_format=chat: the chat template of .* cannot be trained on"):
        check_trainable(chat)
    check_trainable(ModelConfig(name=str(model), prompt_format="plain"))  # laffi's own layout serves
    with pytest.raises(ConfigError, match="does not exist") as missing:  # a mistyped name is named as such
        check_trainable(ModelConfig(name=str(tmp_path / "mistyped"), prompt_format="chat"))
    assert "chat template" not in str(missing.value)
    assert load_tokenizer(chat).chat_template == MISTRAL_V03_LIKE  # answering alone (evaluation, an annotator) may
    # `laffi run` stops before the base model answers anything
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), f"model.name={model}", "model.prompt_format=chat", "data.eval_size=4",
                 "data.train_size=4"]) == 2
    assert not (out / "eval").exists() and not (out / "answers.jsonl").exists()
    # and so does `laffi generate` on a run prepared by hand
    prepared = tmp_path / "prepared"
    assert main(["prepare", str(prepared), "data.eval_size=4", "data.train_size=4"]) == 0
    assert main(["generate", str(prepared), f"model.name={model}", "model.prompt_format=chat"]) == 2
    assert not (prepared / "answers.jsonl").exists()


def test_a_model_without_a_chat_template_is_said_to_take_the_plain_layout(tiny_model_dir, tmp_path, capsys):
    import shutil

    from laffi.models import check_trainable, load_tokenizer
    from laffi.prompts import plain_template

    model = tmp_path / "base-model"  # a base model: no chat template
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    chat = ModelConfig(name=str(model), prompt_format="chat")
    tokenizer = load_tokenizer(chat)
    assert tokenizer.chat_template == plain_template(tokenizer)
    check_trainable(chat)
    assert f"model.prompt_format=chat: {model} has no chat template" in capsys.readouterr().out
    check_trainable(ModelConfig(name=str(tiny_model_dir), prompt_format="chat"))  # one that has a template
    check_trainable(ModelConfig(name=str(model), prompt_format="plain"))  # the layout asked for
    assert "no chat template" not in capsys.readouterr().out


def test_the_plain_layout_begins_with_bos_where_the_tokenizer_begins_every_text_with_one(tiny_model_dir):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from laffi.prompts import PLAIN_CHAT_TEMPLATE, plain_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert plain_template(tokenizer) == PLAIN_CHAT_TEMPLATE  # SmolLM2's tokenizer adds no BOS: the layout as it was
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tokenizer.chat_template = plain_template(tokenizer)  # as Llama-2's or Mistral's tokenizer: BOS on every text
    messages = qa_messages(QAExample("q", "T", "Paris is in France.", "Where is Paris?", ["France"]), [])
    assert prompt_ids(tokenizer, messages)[0] == bos
