"""How fast a training step runs: the FLOP count of a step, the device's peak, and a timed micro-batch with the
largest micro-batch that fits (what sizes a training run to a time window)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from sdlib.cache import Record
from sdlib.parts import decoder_parts
from sdlib.train import distillation_loss

# dense bf16 peak FLOP/s by device name (the MFU denominators)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def model_flops_per_token(model: nn.Module, lens_samples: int = 0) -> float:
    """Training FLOPs per token: 6 x non-embedding params (student forward + backward) + 6 x n x d x V (the
    lenses; n = L + 1 layers, or the ``lens_samples`` sampled ones) + 2 x params (the teacher's forward)."""

    parts = decoder_parts(model)
    vocab, d = parts.lm_head.weight.shape
    params = sum(p.numel() for p in model.parameters())
    non_embedding = params - parts.embed.weight.numel()
    if parts.lm_head.weight is not parts.embed.weight:
        non_embedding -= parts.lm_head.weight.numel()
    lenses = min(lens_samples, parts.num_layers) if lens_samples else parts.num_layers
    return 6 * non_embedding + 6 * lenses * d * vocab + 2 * params


def peak_flops(device: torch.device | str) -> float | None:
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


@dataclass
class StepTiming(Record):
    micro_batch: int
    seq_len: int
    lens_samples: int
    seconds_per_micro_batch: float
    tokens_per_s: float
    step_seconds: float
    """one optimizer step of the config's batch_size (accumulation of micro-batches)"""
    flops_per_token: float
    mfu: float | None
    peak_memory_gb: float | None


def time_micro_batch(student: nn.Module, teacher: nn.Module, config, micro_batch: int, repeats: int = 2) -> float:
    """Seconds for one micro-batch forward + backward of the training loss (after a warm-up)."""

    device = next(student.parameters()).device
    vocab = student.config.vocab_size
    ids = torch.randint(0, vocab, (micro_batch, config.seq_len), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    autocast = device.type == "cuda" and config.precision != "fp32"

    def once():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            parts = distillation_loss(student, teacher, ids, None, config)
            parts.total.backward()
        student.zero_grad(set_to_none=True)

    once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def largest_micro_batch(student: nn.Module, teacher: nn.Module, config, candidates=(16, 8, 4, 2, 1)
                        ) -> tuple[int, float]:
    """The largest micro-batch (a divisor of the config's batch size) whose step fits in memory, and its time."""
    device = next(student.parameters()).device
    for micro in [c for c in candidates if c <= config.batch_size and config.batch_size % c == 0]:
        try:
            return micro, time_micro_batch(student, teacher, config, micro)
        except torch.OutOfMemoryError:
            student.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise RuntimeError("not even a micro-batch of one sequence fits in memory")


def measure_step(model: nn.Module, config, lens_samples: tuple[int, ...] = (0, 4), micro_batch: int | None = None
                 ) -> list[StepTiming]:
    """Time the config's training step on ``model``'s device for each ``lens_samples`` setting (0 = exact zeta1),
    with the largest micro-batch that fits for the first setting (or ``micro_batch``)."""
    device = next(model.parameters()).device
    student = model.train()
    teacher = copy.deepcopy(model).requires_grad_(False)
    out = []
    for lens in lens_samples:
        cfg = replace(config, lens_samples=lens)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if micro_batch is None:
            micro_batch, seconds = largest_micro_batch(student, teacher, cfg)
        else:
            seconds = time_micro_batch(student, teacher, cfg, micro_batch)
        tokens = micro_batch * cfg.seq_len
        flops = model_flops_per_token(student, lens)
        peak = peak_flops(device)
        out.append(StepTiming(micro_batch=micro_batch, seq_len=cfg.seq_len, lens_samples=lens,
                              seconds_per_micro_batch=seconds, tokens_per_s=tokens / seconds,
                              step_seconds=seconds * cfg.batch_size / micro_batch, flops_per_token=flops,
                              mfu=tokens / seconds * flops / peak if peak else None,
                              peak_memory_gb=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None))
    del teacher
    return out
