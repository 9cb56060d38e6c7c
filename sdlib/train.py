"""The self-distillation training loop (``python -m sdlib train CONFIG.yaml``).

AdamW, cosine schedule with optional warm-up, gradient accumulation to the global batch, clipping, bf16
autocast on CUDA and fp32 on CPU, one seed. Multi-process through ``accelerate launch``: each process
takes its own micro-batches of every global batch and gradients are averaged, so N processes give the
same update as one process with the same global batch. The teacher is a frozen copy of the starting
weights (``config.model``, also on resume).
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sdlib.checkpoint import (
    CONFIG_FILE,
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    remove_partial_saves,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sdlib.config import TrainConfig, load_config
from sdlib.errors import SdlibError
from sdlib.loss import LossParts, TeacherHead, self_distillation_loss
from sdlib.measure import measure_windows
from sdlib.models import decoder_parts, load, max_sequence_length
from sdlib.states import forward_states

LOG_FILE = "log.jsonl"


def distillation_loss(student, teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      config: TrainConfig, loss_fn=self_distillation_loss) -> LossParts:
    """zeta for one micro-batch: teacher forward without autograd, student forward, chunked loss
    (``loss_fn=reference_self_distillation_loss`` for the plain one)."""
    teacher_parts = decoder_parts(teacher)
    with torch.no_grad():
        teacher_hidden = teacher_parts.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                                use_cache=False).last_hidden_state
    states = forward_states(student, input_ids, attention_mask).pre_norm
    parts = decoder_parts(student)
    return loss_fn(
        states, parts.norm, parts.lm_head,
        TeacherHead(teacher_hidden, teacher_parts.lm_head.weight, teacher_parts.lm_head.bias, teacher_parts.transform),
        alpha=config.alpha, k=config.k, attention_mask=attention_mask, last_state=config.last_state,
        kl_direction=config.kl_direction, chunk_size=config.chunk_size, zeta2_form=config.zeta2_form,
        lens_layers=config.lens_layers, logit_transform=parts.transform)


def _accelerator(config: TrainConfig):
    from accelerate import Accelerator

    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise SdlibError("config asks for device cuda but no CUDA device is visible: use --device cpu")
    bf16 = config.precision == "bf16" or (config.precision == "auto" and not cpu)
    return Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no")


def _read_log(path: Path, up_to_step: int) -> list[str]:
    """Log lines of steps <= up_to_step (lines written after the checkpoint are dropped on resume)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("step", 0) <= up_to_step:
            kept.append(line)
    return kept


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) self-distillation; returns the run folder. Checkpoints go to <run>/checkpoints."""
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    from sdlib.data import PackedSequences, read_text, text_windows, training_documents
    from sdlib.provenance import provenance, write_json

    config.validate()
    accelerator = _accelerator(config)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = config.batch_size // config.micro_batch
    if per_step % world:
        raise SdlibError(f"batch_size / micro_batch = {per_step} micro-batches per step cannot be split over "
                         f"{world} processes: make it a multiple of {world}")
    accum = per_step // world
    run_dir = config.run_dir()
    total_steps = config.total_steps
    if resume and finished(config):  # nothing to do: do not load two models to find that out
        if accelerator.is_main_process:
            print(f"{run_dir}: already finished ({total_steps} steps); nothing to resume", flush=True)
        return run_dir
    set_seed(config.seed)

    student, tokenizer = load(config.model, **config.model_options)
    if config.seq_len > max_sequence_length(student):
        raise SdlibError(f"seq_len {config.seq_len} is above {config.model}'s maximum of "
                         f"{max_sequence_length(student)} positions")
    teacher = copy.deepcopy(student).requires_grad_(False)  # the frozen starting weights

    if accelerator.is_main_process:
        remove_partial_saves(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and not resume:
        raise SdlibError(f"run folder {run_dir} already has checkpoints: pass --resume to continue it, "
                         "or choose another --name / --output_dir")
    state: dict[str, Any] = {"step": 0}
    if checkpoint is not None:
        state = load_training_state(checkpoint)
        saved = state["config"]
        if saved.get("model") != config.model or saved.get("model_options") != config.model_options:
            raise SdlibError(f"checkpoint {checkpoint} was trained from {saved.get('model')!r}, "
                             f"not {config.model!r}: resume with the same model, or start a new run")
        from safetensors.torch import load_file

        weights = {}
        for f in sorted(checkpoint.glob("*.safetensors")):
            weights.update(load_file(f))
        missing, unexpected = student.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:
            raise SdlibError(f"checkpoint {checkpoint} does not match {config.model}: resume with the same model")
        if student.config.tie_word_embeddings:
            student.tie_weights()

    optimizer = torch.optim.AdamW(optimizer_groups(student, config), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, total_steps)
    if checkpoint is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    student.train()
    model, optimizer = accelerator.prepare(student, optimizer)
    teacher.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(model)
    if checkpoint is not None:
        set_rng_state(state["rng"])

    documents, data_hashes = training_documents(config.data, shuffle_seed=config.seed if config.shuffle else None)
    stream = PackedSequences(documents, tokenizer, config.seq_len, eager=config.data != "fineweb-edu" or
                             data_hashes.get("fineweb-edu", "").startswith("sha256:"),
                             shuffle_seed=config.seed if config.shuffle else None)
    eval_body, eval_hashes = read_text(config.eval_text)
    eval_windows = text_windows(tokenizer, eval_body, config.eval_windows, config.eval_window_len)

    log_path = run_dir / LOG_FILE
    main = accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        kept = _read_log(log_path, state["step"])
        log_path.write_text("".join(line + "\n" for line in kept))
        write_json(run_dir / "run.json", {"config": config.to_dict(), "total_steps": total_steps,
                                          "processes": world, "accumulation": accum,
                                          **provenance(seed=config.seed, device=accelerator.device,
                                                       data={**data_hashes, **eval_hashes},
                                                       limits={"max_tokens": config.max_tokens})})

    def log(record: dict[str, Any]) -> None:
        if main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate(step: int) -> dict[str, Any]:
        was_training = unwrapped.training
        unwrapped.eval()
        m = measure_windows(unwrapped, eval_windows, batch_size=config.micro_batch)
        unwrapped.train(was_training)
        record = {"step": step, "eval": {"D": m.D, "S": m.S, "tokens": m.n_tokens}}
        log(record)
        return record

    tokens_per_step = config.batch_size * config.seq_len
    step = state["step"]
    last_eval: dict[str, Any] = {}
    if step == 0 and main:
        last_eval = evaluate(0)
    bar = tqdm(total=total_steps, initial=step, desc=f"train {config.name}", unit="step",
               disable=not (progress and main), dynamic_ncols=True)
    skipped = state.get("skipped_steps", 0)
    started = time.monotonic()
    while step < total_steps:
        t0 = time.perf_counter()
        sums = None  # loss, zeta1, zeta2, per-layer KL, summed over micro-batches on the device (no host sync)
        problem = None
        for micro in range(accum):
            first = step * config.batch_size + (rank * accum + micro) * config.micro_batch
            input_ids = stream.batch(first, config.micro_batch).to(accelerator.device)
            sync = nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                parts = distillation_loss(model, teacher, input_ids, None, config)
                if problem is None and not torch.isfinite(parts.total):
                    problem = _nonfinite_message(step + 1, parts)
                # backward even then: the non-finite gradient it makes reaches every process through the
                # gradient all-reduce, so all of them stop (or skip) together instead of waiting on each other
                accelerator.backward(parts.total / accum)
            micro_stats = torch.cat([torch.stack([parts.total.detach(), parts.zeta1, parts.zeta2]),
                                     parts.kl_per_layer]).double()
            sums = micro_stats if sums is None else sums + micro_stats
        grad_norm = (accelerator.clip_grad_norm_(model.parameters(), config.grad_clip) if config.grad_clip > 0
                     else _grad_norm(model))
        if problem is None and not torch.isfinite(torch.as_tensor(grad_norm)):
            problem = (f"step {step + 1}: the gradient is not finite (norm {float(grad_norm)}) although this "
                       f"process's loss is finite (zeta1={float(parts.zeta1):.6g}, zeta2={float(parts.zeta2):.6g})")
        lr = scheduler.get_last_lr()[0] / optimizer.param_groups[0]["lr_multiplier"]  # the base schedule
        if problem is not None:
            optimizer.zero_grad(set_to_none=True)
            if config.on_nonfinite == "stop":
                raise SdlibError(f"{problem}; the last good checkpoint is kept: lower lr or check the data, then "
                                 "--resume (or set on_nonfinite: skip)")
            skipped += 1
            step += 1
            scheduler.step()
            log({"step": step, "skipped": problem, "skipped_steps": skipped, "tokens": step * tokens_per_step})
            bar.update(1)
            bar.write(f"skipped {problem}")
            continue
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        stats = accelerator.reduce(sums, "mean").cpu() / accum
        elapsed = time.perf_counter() - t0
        epochs = stream.epochs(step * config.batch_size)
        record = {"step": step, "tokens": step * tokens_per_step, "epochs": epochs,
                  "loss": float(stats[0]), "zeta1": float(stats[1]), "zeta2": float(stats[2]),
                  "kl_per_layer": [None if math.isnan(v) else v for v in stats[3:].tolist()], "lr": lr,
                  "grad_norm": float(grad_norm), "skipped_steps": skipped,
                  "tokens_per_s": tokens_per_step / elapsed, "seconds": elapsed}
        log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", z1=f"{record['zeta1']:.4f}", z2=f"{record['zeta2']:.4f}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
        out_of_time = _out_of_time(accelerator, started, config.max_minutes)
        if main and (config.eval_every and step % config.eval_every == 0 or step == total_steps or out_of_time):
            last_eval = evaluate(step)
            bar.write(f"step {step}: S normed {last_eval['eval']['S']['normed']:.4f}, "
                      f"pre_norm {last_eval['eval']['S']['pre_norm']:.4f}")
        if config.save_every and step % config.save_every == 0 or step == total_steps or out_of_time:
            accelerator.wait_for_everyone()
            if main:
                training_state = {"step": step, "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "rng": rng_state(),
                                  "config": config.to_dict(), "sequences_read": step * config.batch_size,
                                  "skipped_steps": skipped}
                save_checkpoint(run_dir, step, unwrapped, tokenizer, training_state, config,
                                {"step": step, "last_step": record, "last_eval": last_eval,
                                 **provenance(seed=config.seed, device=accelerator.device, data=data_hashes)})
            accelerator.wait_for_everyone()
        if out_of_time and step < total_steps:
            log({"step": step, "stopped": f"max_minutes {config.max_minutes} reached after step {step} of "
                                          f"{total_steps}; --resume continues"})
            bar.write(f"stopped after step {step} of {total_steps}: max_minutes {config.max_minutes} reached "
                      "(a checkpoint is saved; --resume continues)")
            break
    bar.close()
    return run_dir


def _out_of_time(accelerator, started: float, max_minutes: float) -> bool:
    """True on every process once the main process has trained for ``max_minutes`` (0 = never)."""
    if not max_minutes:
        return False
    late = torch.tensor(float((time.monotonic() - started) / 60 >= max_minutes), device=accelerator.device)
    return bool(accelerator.reduce(late, "max") > 0)


def optimizer_groups(model, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups, one per part of the model (``DecoderParts.parameter_groups``), each with its
    learning rate lr x ``config.lr_multipliers[part]`` (1 when not given)."""
    groups = decoder_parts(model).parameter_groups()
    return [{"params": params, "name": name, "lr_multiplier": float(config.lr_multipliers.get(name, 1.0)),
             "lr": config.lr * float(config.lr_multipliers.get(name, 1.0))} for name, params in groups.items()]


def finished(config: TrainConfig) -> bool:
    """True when the run's last checkpoint is its final step and was trained from the same model."""
    found = list_checkpoints(config.run_dir())
    if not found or found[-1][0] < config.total_steps:
        return False
    saved = load_config(found[-1][1] / CONFIG_FILE)
    return saved.model == config.model and saved.model_options == config.model_options


def _nonfinite_message(step: int, parts: LossParts) -> str:
    """Which part of the loss is not finite: zeta1 with the first layers whose KL is bad, or zeta2."""
    bad = [f"layer {i} KL={v}" for i, v in enumerate(parts.kl_per_layer.tolist()) if math.isinf(v)
           or (math.isnan(v) and not parts.sampled_out(i))]
    where = "zeta1 (" + ", ".join(bad[:3]) + ")" if bad else ("zeta2" if not torch.isfinite(parts.zeta2) else "zeta1")
    return (f"step {step}: the loss is not finite (zeta1={float(parts.zeta1)}, zeta2={float(parts.zeta2)}; "
            f"from {where})")


def _grad_norm(model) -> torch.Tensor:
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
