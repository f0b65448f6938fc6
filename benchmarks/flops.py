"""FLOPs: what one LoRA training step needs, and what this machine can do.

    python benchmarks/flops.py            # prints the measured matmul peaks, fp32 and bf16, and the memory's copy rate

Training FLOPs are counted from the model's shapes and the batch's real (unpadded) lengths, the
work the step needs whatever the implementation does:
- every linear layer of the body: forward and input gradient, 2 x 2 x its parameters per token
  (the frozen base weights need no weight gradient, so not the usual 6N);
- attention scores and values: 4 x width x (position + 1) per token and layer forward, twice that
  backward;
- LoRA: 6 x its parameters per token (forward, input and weight gradients);
- the LM head: forward and input gradient, only at the positions that predict a completion token.
The peak is measured, not read from a datasheet: the best of a few large matmuls in the training
dtype with the threads torch uses (on a GPU, on the GPU), which is what a dense training step could
at most reach here. So is the memory's rate, the best copy of a tensor far larger than the caches:
on a 2-core VM it bounds the elementwise ops and the attention's small matmuls (an Intel Xeon whose
bf16 matmuls ran at twice an AMD EPYC's trained slower than it; docs/speed.md).
"""

from __future__ import annotations

import json
import time

import torch


def linear_params(config) -> tuple[int, int]:
    """(parameters of the body's linear layers, of the LM head) for a Llama-style config."""
    width, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or width // heads
    kv = config.num_key_value_heads * head_dim
    attention = width * heads * head_dim * 2 + width * kv * 2  # q, o; k, v
    mlp = 3 * width * config.intermediate_size  # gate, up, down
    return config.num_hidden_layers * (attention + mlp), width * config.vocab_size


def lora_params(config, r: int, targets: list[str]) -> int:
    width, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or width // heads
    kv = config.num_key_value_heads * head_dim
    shapes = {"q_proj": (width, heads * head_dim), "k_proj": (width, kv), "v_proj": (width, kv),
              "o_proj": (heads * head_dim, width), "gate_proj": (width, config.intermediate_size),
              "up_proj": (width, config.intermediate_size), "down_proj": (config.intermediate_size, width)}
    return config.num_hidden_layers * sum(r * sum(shapes[t]) for t in targets)


def training_flops(config, lengths: list[int], completion_tokens: int, lora: int) -> float:
    """FLOPs one step needs for sequences of `lengths` tokens with `completion_tokens` scored."""
    body, head = linear_params(config)
    tokens = sum(lengths)
    attention_width = config.num_attention_heads * (getattr(config, "head_dim", None)
                                                    or config.hidden_size // config.num_attention_heads)
    # sum over positions p of (p + 1) keys: T(T+1)/2 per sequence; x3 for forward + backward
    attention = 3 * 4 * config.num_hidden_layers * attention_width * sum(t * (t + 1) // 2 for t in lengths)
    return 4 * body * tokens + attention + 6 * lora * tokens + 4 * head * completion_tokens


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a timer measures the matmuls, not their launch."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def matmul_peak(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 2.0,
                device: str = "cpu") -> float:
    """The best FLOP/s of size x size matmuls over a few seconds."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    repeats = 1 if device == "cpu" else 10  # one GPU matmul is too short to time with a host clock
    torch.matmul(a, b)  # warm up: thread pool, kernel choice
    synchronize(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        synchronize(device)
        best = max(best, repeats * 2 * size**3 / (time.perf_counter() - started))
    return best


# source and target together 512 MiB, more than the largest cache seen (the Xeon VM's shared L3 reports 480 MiB)
COPY_BYTES = 256 * 2**20
COPY_REPEATS = 5


def copy_rate(device: str = "cpu", size: int = COPY_BYTES, repeats: int = COPY_REPEATS) -> float:
    """The best bytes/s of copying a `size`-byte tensor into another, counting what is read and written."""
    source = torch.ones(size // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # warm up: pages faulted in, threads started
    synchronize(device)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        best = max(best, 2 * size / (time.perf_counter() - started))
    return best


def peak(device: str = "cpu", training_dtype: str = "fp32") -> dict:
    """Matmul peaks on `device` in fp32, bf16 and the training dtype (a GPU needs larger matrices), and the
    memory's copy rate."""
    sizes = (1024, 2048) if device == "cpu" else (4096, 8192)
    names = dict.fromkeys(["fp32", "bf16", training_dtype])
    where = f"{torch.get_num_threads()} CPU threads" if device == "cpu" else device
    return {f"{name}_flops": max(matmul_peak(DTYPES[name], size, 2.0, device) for size in sizes) for name in names} | {
        "copy_bytes_per_s": copy_rate(device), "device": device, "training_dtype": training_dtype,
        "threads": torch.get_num_threads(),
        "how": f"best of repeated {sizes[0]}^2 and {sizes[1]}^2 matmuls (torch.matmul) on {where}; "
               f"the best of {COPY_REPEATS} copies of {COPY_BYTES // 2**20} MiB, bytes read and written"}


if __name__ == "__main__":
    print(json.dumps(peak("cuda" if torch.cuda.is_available() else "cpu"), indent=2))
