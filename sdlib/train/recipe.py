"""The self-distillation recipe (``sdlib train CONFIG.yaml``): setup, one step, evaluate, save.

AdamW (one parameter group per part of the model, each with its learning-rate multiplier), cosine schedule
with optional warm-up, gradient accumulation to the global batch, clipping, bf16 autocast on CUDA and fp32 on
CPU, one seed. Multi-process through ``accelerate launch``: each process takes its own micro-batches of every
global batch and gradients are averaged, so N processes give the same update as one process with the same
global batch. The teacher is a frozen copy of the starting weights (``config.model``, also on resume).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sdlib import timings
from sdlib.data import PackedSequences, training_documents
from sdlib.errors import SdlibError, first_line
from sdlib.fold import fold_final_norm
from sdlib.loss import LossParts, TeacherHead, self_distillation_loss
from sdlib.measurement import LastStepObserver, measure_windows
from sdlib.models import check_options, default_device, load, max_sequence_length
from sdlib.parts import decoder_parts
from sdlib.provenance import provenance, write_json
from sdlib.runs import list_checkpoints, remove_partial_saves, resumable_checkpoint, run_lock
from sdlib.states import forward_states
from sdlib.train.card import model_card, push_to_hub
from sdlib.train.checkpoint import load_training_state, restore_training_state, save_checkpoint
from sdlib.train.config import MAY_CHANGE_ON_RESUME, TrainConfig, format_differences, resume_differences
from sdlib.train.runlog import EvalRecord, RunLog, SkipRecord, StepRecord, StopRecord, evals, read_log
from sdlib.types import OnNonFinite, Precision, ReportTo


def teacher_head(teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> TeacherHead:
    """The frozen teacher's output distribution for a micro-batch (its final normed states and its head)."""
    parts = decoder_parts(teacher)
    with torch.no_grad():
        hidden = parts.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return TeacherHead(hidden, parts.lm_head.weight, parts.lm_head.bias, parts.transform)


NO_TEACHER = TeacherHead(torch.empty(0), torch.empty(0))
"""what the loss gets when it leaves zeta1 out (``zeta1: false``): the teacher's forward is skipped"""


def student_loss(student, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, teacher: TeacherHead,
                 config: TrainConfig, loss_fn=self_distillation_loss) -> LossParts:
    """zeta of the student against ``teacher``: student forward (through any wrapper), then the chunked loss."""
    states = forward_states(student, input_ids, attention_mask).pre_norm
    parts = decoder_parts(student)
    return loss_fn(states, parts.norm, parts.lm_head, teacher, config.loss(), attention_mask=attention_mask,
                   logit_transform=parts.transform)


def distillation_loss(student, teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      config: TrainConfig, loss_fn=self_distillation_loss) -> LossParts:
    """zeta for one micro-batch: teacher forward without autograd, student forward, chunked loss
    (``loss_fn=reference_self_distillation_loss`` for the plain one)."""
    return student_loss(student, input_ids, attention_mask, teacher_head(teacher, input_ids, attention_mask), config,
                        loss_fn)


def _rng_untouched(device: torch.device):
    """A block whose random draws leave torch's global RNG (CPU, and this CUDA device) as it found it."""
    devices = [device] if getattr(device, "type", None) == "cuda" else []
    return torch.random.fork_rng(devices=devices)


class Distiller(torch.nn.Module):
    """The student with the loss inside its forward pass: what the recipe hands to accelerate.

    Under FSDP the root unit (embedding, final norm, lm_head) holds its full weights only inside the root's
    forward; a loss computed after ``model(...)`` returns would read the shards. ``Distiller(ids, mask,
    teacher=head)`` returns the ``LossParts``; without ``teacher`` it is the student's own forward (the S
    measurement runs through it). ``module`` is the student, so ``sdlib.parts.unwrap`` finds it.
    """

    def __init__(self, student: torch.nn.Module, config: TrainConfig):
        super().__init__()
        self.module = student
        self.config = config
        self._no_split_modules = getattr(student, "_no_split_modules", None)  # accelerate's FSDP auto-wrap reads it

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                teacher: TeacherHead | None = None, **kwargs):
        if teacher is None:
            return self.module(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return student_loss(self.module, input_ids, attention_mask, teacher, self.config)


class SelfDistillation:
    """One training run: ``setup`` (models, optimizer, data, resume), ``train_step``, ``evaluate``, ``save``;
    ``run`` loops them. Everything a step needs lives on the instance."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True):
        self.config, self.resume, self.progress = config, resume, progress
        self.run_dir = config.run_dir()
        self.checkpoint: Path | None = None
        """the checkpoint this run continues from (``check_resume`` finds it)"""
        self.state: dict[str, Any] = {"step": 0}
        """that checkpoint's training state (step, data position, config), read once"""
        self.first_eval: EvalRecord | None = None
        """the run's measurement at step 0 (what the model card compares with)"""
        self.last_eval: EvalRecord | None = None

    # --- setup ------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """The accelerator and process layout, then the models, the optimizer, the data and the log, in order."""
        from accelerate.utils import set_seed

        config = self.config
        self.accelerator = accelerator = self._accelerator()
        self.world, self.rank, self.main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
        per_step = config.batch_size // config.micro_batch
        if per_step % self.world:
            raise SdlibError(f"batch_size / micro_batch = {per_step} micro-batches per step cannot be split over "
                             f"{self.world} processes: make it a multiple of {self.world}")
        self.accum = per_step // self.world
        set_seed(config.seed)
        # the random draws of training (a sampled zeta1's layers) start from the seed, or from a resumed
        # checkpoint's RNG state, whatever loading a model or data drew on the way (a first load that builds the
        # model's cache draws; a later one does not): those steps run on a forked RNG
        with _rng_untouched(accelerator.device):
            student = self._setup_model()
        self._setup_optimizer(student)  # a resumed run's RNG state is restored here
        with _rng_untouched(accelerator.device):
            self._setup_data()
        self._setup_log()

    def _setup_model(self) -> torch.nn.Module:
        """The student (a resumed run's weights loaded) and the frozen teacher (the starting weights)."""
        config, checkpoint = self.config, self.checkpoint
        student, self.tokenizer = load(config.model, **config.model_options)
        if config.seq_len > max_sequence_length(student):
            raise SdlibError(f"seq_len {config.seq_len} is above {config.model}'s maximum of "
                             f"{max_sequence_length(student)} positions")
        if config.fold_final_norm:
            fold_final_norm(student)  # the same outputs; the normed h_L now points where the last block's output does
        groups = decoder_parts(student).parameter_groups()
        for name in config.freeze:
            for p in groups.get(name, []):
                p.requires_grad_(False)
        self.teacher = copy.deepcopy(student).requires_grad_(False)  # the frozen starting weights
        if checkpoint is not None:
            if self.accelerator.distributed_type == "FSDP":
                raise SdlibError(f"resuming {self.run_dir} under FSDP is not supported: its optimizer state is sharded "
                                 "across processes and sdlib saves the main process's; resume with data parallelism "
                                 "(configs/accelerate/ddp.yaml) or start a new run")
            self._load_weights(student, checkpoint)
        return student

    def _setup_optimizer(self, student: torch.nn.Module) -> None:
        """AdamW over the student's parameter groups and the cosine schedule, prepared by accelerate with the
        student (a resumed run's optimizer and schedule state restored)."""
        from transformers import get_cosine_schedule_with_warmup

        config, accelerator = self.config, self.accelerator
        optimizer = torch.optim.AdamW(optimizer_groups(student, config), lr=config.lr,
                                      betas=(config.beta1, config.beta2), weight_decay=config.weight_decay,
                                      fused=fused_adamw(student, accelerator.device))
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.total_steps)
        student.train()
        self.model, self.optimizer = accelerator.prepare(Distiller(student, config), optimizer)
        self.teacher.to(accelerator.device)
        self.unwrapped = accelerator.unwrap_model(self.model).module  # the student
        if self.checkpoint is not None:
            restore_training_state(self.checkpoint, self.optimizer, self.scheduler)
        self.step, self.skipped = self.state["step"], self.state.get("skipped_steps", 0)
        self.sequences_read = self.state.get("sequences_read", self.step * config.batch_size)  # the data position

    def _setup_data(self) -> None:
        """The training stream (in the seeded order) and the held-out windows with the teacher's states on them."""
        config = self.config
        shuffle = config.seed if config.shuffle else None
        documents, self.data_hashes = training_documents(config.data, shuffle_seed=shuffle)
        finite = config.data != "fineweb-edu" or self.data_hashes.get("fineweb-edu", "").startswith("sha256:")
        self.stream = PackedSequences(documents, self.tokenizer, config.seq_len, eager=finite, shuffle_seed=shuffle)
        self.eval_where = config.log_windows()
        self.eval_windows, _, self.eval_hashes = self.eval_where.sample(self.tokenizer)
        self.teacher_eval = self._teacher_states(self.eval_windows)
        self.massive_channel: int | None = None

    def _setup_log(self) -> None:
        """The run folder's log (cut back to the resumed step), ``run.json`` and any tracker."""
        config, accelerator = self.config, self.accelerator
        self.log = RunLog(self.run_dir, enabled=self.main)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.log.truncate(self.step)
            write_json(self.run_dir / "run.json", {
                "config": config.to_dict(), "total_steps": config.total_steps, "processes": self.world,
                "accumulation": self.accum, **provenance(seed=config.seed, device=accelerator.device,
                                                         data={**self.data_hashes, **self.eval_hashes},
                                                         limits={"max_tokens": config.max_tokens})})
        if config.report_to != ReportTo.NONE:
            accelerator.init_trackers(config.name, config={k: v for k, v in config.to_dict().items()
                                                           if isinstance(v, (int, float, str, bool))})

    @torch.no_grad()
    def _teacher_states(self, windows: torch.Tensor) -> torch.Tensor | None:
        """The teacher's final normed states of the held-out windows, [n, T, d] on the CPU (for the final layer's
        KL in every measurement); None under FSDP, where the lens cannot read the sharded head outside forward."""
        if self.accelerator.distributed_type == "FSDP":
            return None
        backbone = decoder_parts(self.teacher).backbone
        return torch.cat([backbone(input_ids=windows[s: s + self.config.micro_batch].to(self.accelerator.device),
                                   use_cache=False).last_hidden_state.cpu()
                          for s in range(0, len(windows), self.config.micro_batch)])

    def _accelerator(self):
        from accelerate import Accelerator

        config = self.config
        cpu = default_device(str(config.device)) == "cpu"  # one line for a device this machine does not have
        bf16 = config.precision == Precision.BF16 or (config.precision == Precision.AUTO and not cpu)
        trackers = {} if config.report_to == ReportTo.NONE else {
            "log_with": str(config.report_to), "project_dir": str(self.run_dir / "tracking")}
        try:
            return Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no", **trackers)
        except RuntimeError as err:  # e.g. an FSDP launch config on a machine without GPUs
            launch = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
            hint = ("FSDP needs GPUs (accelerate has no CPU FSDP): launch with configs/accelerate/ddp.yaml or on GPUs"
                    if launch else "check the accelerate launch config")
            raise SdlibError(f"accelerate could not start ({first_line(err)}): {hint}") from None

    def _load_weights(self, student, checkpoint: Path) -> None:
        """The checkpoint's weights into ``student`` (``check_resume`` has already held its config, the base model
        included, equal to this run's)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        config = self.config
        weights = {}
        for f in sorted(checkpoint.glob("*.safetensors")):
            try:
                weights.update(load_file(f))
            except (SafetensorError, OSError) as err:
                raise SdlibError(f"checkpoint {checkpoint}: {f.name} cannot be read ({first_line(err)}): it is "
                                 "damaged; delete that checkpoint folder to resume from the one before") from None
        missing, unexpected = student.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:
            raise SdlibError(f"checkpoint {checkpoint} does not match {config.model}: resume with the same model")
        if student.config.tie_word_embeddings:
            student.tie_weights()

    # --- one step -------------------------------------------------------------------------------------------

    def train_step(self) -> StepRecord | SkipRecord:
        """One optimizer step over the global batch (gradient accumulation); -> its log record."""
        config, accelerator, step = self.config, self.accelerator, self.step
        t0 = time.perf_counter()
        sums = None  # loss, zeta1, zeta2, per-layer KL and zeta2 terms, summed over micro-batches (no host sync)
        problem = None
        for micro in range(self.accum):
            first = self.sequences_read + (self.rank * self.accum + micro) * config.micro_batch
            input_ids = self.stream.batch(first, config.micro_batch).to(accelerator.device)
            sync = nullcontext() if micro == self.accum - 1 else accelerator.no_sync(self.model)
            with sync, accelerator.autocast():
                teacher = teacher_head(self.teacher, input_ids, None) if config.zeta1 else NO_TEACHER
                parts = self.model(input_ids, None, teacher=teacher)
                if problem is None and not torch.isfinite(parts.total):
                    problem = _nonfinite_message(step + 1, parts)
                # backward even then: the non-finite gradient it makes reaches every process through the
                # gradient all-reduce, so all of them stop (or skip) together instead of waiting on each other
                accelerator.backward(parts.total / self.accum)
            drawn = ~torch.isnan(parts.kl_per_layer)  # a sampled zeta1 leaves layers out (their KL is NaN)
            micro_stats = torch.cat([torch.stack([parts.total.detach(), parts.zeta1, parts.zeta2]),
                                     parts.kl_per_layer.nan_to_num(0.0), parts.zeta2_per_layer, drawn]).double()
            sums = micro_stats if sums is None else sums + micro_stats
        grad_norm = (accelerator.clip_grad_norm_(self.model.parameters(), config.grad_clip) if config.grad_clip > 0
                     else _grad_norm(self.model))
        if problem is None and not torch.isfinite(torch.as_tensor(grad_norm)):
            problem = (f"step {step + 1}: the gradient is not finite (norm {float(grad_norm)}) although this "
                       f"process's loss is finite (zeta1={float(parts.zeta1):.6g}, zeta2={float(parts.zeta2):.6g})")
        lr = self.scheduler.get_last_lr()[0] / self.optimizer.param_groups[0]["lr_multiplier"]  # the base schedule
        tokens_per_step = config.batch_size * config.seq_len
        if problem is not None:
            self.optimizer.zero_grad(set_to_none=True)
            if config.on_nonfinite == OnNonFinite.STOP:
                raise SdlibError(f"{problem}; the last good checkpoint is kept: lower lr or check the data, then "
                                 "--resume (or set on_nonfinite: skip)")
            self.skipped += 1
            self.step += 1
            self.sequences_read += config.batch_size
            self.scheduler.step()
            return SkipRecord(step=self.step, reason=problem, skipped_steps=self.skipped,
                              tokens=self.step * tokens_per_step)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.sequences_read += config.batch_size
        n_layers, n_terms = len(parts.kl_per_layer), len(parts.zeta2_per_layer)
        stats = accelerator.reduce(sums, "sum").cpu()  # [3 scalars, KL sums, zeta2 terms, draws per layer]
        draws = stats[3 + n_layers + n_terms:]
        kl = stats[3:3 + n_layers] / draws  # each layer's KL averaged over the micro-batches that drew it
        stats = stats[:3 + n_layers + n_terms] / (self.world * self.accum)
        elapsed = time.perf_counter() - t0
        return StepRecord(step=self.step, tokens=self.step * tokens_per_step,
                          epochs=self.stream.epochs(self.step * config.batch_size), loss=float(stats[0]),
                          zeta1=float(stats[1]), zeta2=float(stats[2]),
                          kl_per_layer=[None if math.isnan(v) else v for v in kl.tolist()],
                          zeta2_per_layer=stats[3 + n_layers:].tolist(), lr=lr, grad_norm=float(grad_norm),
                          skipped_steps=self.skipped, tokens_per_s=tokens_per_step / elapsed, seconds=elapsed)

    # --- evaluate and save ---------------------------------------------------------------------------------

    def evaluate(self) -> EvalRecord:
        """The D curve and S (both conventions) on the held-out windows. Every process runs it, through the
        wrapped model (a sharded model needs all of them for its forward pass); the main process logs it."""

        was_training = self.model.training
        self.model.eval()
        observer = None
        if self.teacher_eval is not None:
            observer = LastStepObserver(decoder_parts(self.unwrapped).head, self.teacher_eval,
                                        decoder_parts(self.teacher).head, channel=self.massive_channel)
        m = measure_windows(self.model, self.eval_windows, batch_size=self.config.micro_batch,
                            observers=[observer] if observer else [])
        self.model.train(was_training)
        last_step = None if observer is None else observer.summary()
        if last_step is not None and self.massive_channel is None:
            self.massive_channel = last_step.channel  # followed for the rest of the run
        record = EvalRecord(step=self.step, D=m.D, S=m.S, tokens=m.n_tokens, last_step=last_step)
        self.log.append(record)
        self.last_eval = record
        if self.first_eval is None or self.step == 0:
            self.first_eval = record
        self._track({f"S/{c}": v for c, v in m.S.items()})
        return record

    def save(self, last_record: StepRecord | SkipRecord | None) -> Path | None:
        """A checkpoint of the current step (written by the main process; all processes wait for it)."""

        self.accelerator.wait_for_everyone()
        state_dict = {name.removeprefix("module."): value  # the Distiller's student; gathered from FSDP's shards
                      for name, value in self.accelerator.get_state_dict(self.model).items()}
        path = None
        if self.main:
            config = self.config
            training_state = {"step": self.step, "config": config.to_dict(), "skipped_steps": self.skipped,
                              "sequences_read": self.sequences_read}
            metrics = {"step": self.step, "last_step": None if last_record is None else _asdict(last_record),
                       "first_eval": _asdict(self.first_eval), "last_eval": _asdict(self.last_eval),
                       **provenance(seed=config.seed, device=self.accelerator.device, data=self.data_hashes)}
            path = save_checkpoint(self.run_dir, self.step, self.unwrapped, self.tokenizer, self.optimizer,
                                   self.scheduler, training_state, config, metrics,
                                   model_card(config, self.first_eval, self.last_eval, self.step), state_dict)
            if config.keep_checkpoints:
                for _, old in list_checkpoints(self.run_dir)[:-config.keep_checkpoints]:
                    shutil.rmtree(old)  # the newest are complete (renamed into place after their fsync)
        self.accelerator.wait_for_everyone()
        return path

    def _track(self, values: dict[str, float]) -> None:
        if self.config.report_to != ReportTo.NONE:
            self.accelerator.log(values, step=self.step)

    # --- the loop --------------------------------------------------------------------------------------------

    def check_resume(self) -> None:
        """Find the checkpoint to continue from, before any model loads: refuse a run folder that has one without
        ``--resume``, or whose config differs from this one in a key that may not change on resume; pass over
        (with a line) newer checkpoints that are damaged or incomplete; clear the leftovers of killed saves."""
        remove_partial_saves(self.run_dir)
        checkpoint, passed_over = resumable_checkpoint(self.run_dir)
        if passed_over and checkpoint is None:
            raise SdlibError(f"run folder {self.run_dir} has no checkpoint a resume can continue from "
                             f"({'; '.join(passed_over)}): start a new run (another --name or --output_dir)")
        if checkpoint is not None and not self.resume:
            raise SdlibError(f"run folder {self.run_dir} already has checkpoints: pass --resume to continue it, "
                             "or choose another --name / --output_dir")
        for note in passed_over:
            print(f"resume: passing over {note}; continuing from {checkpoint.name}", file=sys.stderr, flush=True)
        if checkpoint is not None:
            self.state = load_training_state(checkpoint)
            refuse_changed_config(self.run_dir, self.state["config"], self.config)
        self.checkpoint = checkpoint

    def run(self) -> Path:
        if self.resume and finished(self.config):  # nothing to do: read, touch nothing, load no model
            print(f"{self.run_dir}: already finished ({self.config.total_steps} steps); nothing to resume", flush=True)
            return self.run_dir
        check_options(self.config.model, self.config.model_options)  # bad input is refused before any write
        default_device(str(self.config.device))
        with run_lock(self.run_dir) if _launched_as_main() else nullcontext():
            return self._run()

    def _first_measurement(self) -> None:
        """The run's measurement at step 0: made now, or read from a resumed run's log."""
        if self.step == 0:
            self.evaluate()
        elif self.main:
            first = evals(read_log(self.run_dir, 0))
            self.first_eval = first[0] if first else None
            if first and first[0].last_step is not None:
                self.massive_channel = first[0].last_step.channel

    def _after_step(self, record: StepRecord, bar, started: float) -> tuple[Path | None, bool]:
        """After an optimizer step: show and track it, measure, save and stop when due. Returns (the checkpoint
        saved now or None, whether to stop)."""
        config, total = self.config, self.config.total_steps
        if config.log_every and (self.step % config.log_every == 0 or self.step == total):
            bar.set_postfix(loss=f"{record.loss:.4f}", z1=f"{record.zeta1:.4f}", z2=f"{record.zeta2:.4f}",
                            tok_s=f"{record.tokens_per_s:.0f}")
        self._track({"loss": record.loss, "zeta1": record.zeta1, "zeta2": record.zeta2, "lr": record.lr,
                     "grad_norm": record.grad_norm, "tokens_per_s": record.tokens_per_s})
        out_of_time = _out_of_time(self.accelerator, started, config.max_minutes)
        at_end = self.step == total
        if config.eval_every and self.step % config.eval_every == 0 or self.step in config.eval_steps or at_end \
                or out_of_time:
            evaluation = self.evaluate()
            if self.main:
                bar.write(f"step {self.step}: S normed {evaluation.S['normed']:.4f}, pre_norm "
                          f"{evaluation.S['pre_norm']:.4f} (training-log measurement: {self.eval_where.describe()})")
        checkpoint = None
        if config.save_every and self.step % config.save_every == 0 or at_end or out_of_time:
            checkpoint = self.save(record)
        if out_of_time and not at_end:
            self.log.append(StopRecord(step=self.step, reason=f"max_minutes {config.max_minutes} reached after step "
                                       f"{self.step} of {total}; --resume continues"))
            bar.write(f"stopped after step {self.step} of {total}: max_minutes {config.max_minutes} reached (a "
                      "checkpoint is saved; --resume continues)")
            return checkpoint, True
        return checkpoint, False

    def _run(self) -> Path:
        config = self.config
        self.check_resume()
        self.setup()
        self._first_measurement()
        total = config.total_steps
        if self.main and self.progress:
            left = (total - self.step) * config.batch_size * config.seq_len
            print(f"train {config.name}: {config.budget()}; estimated "
                  f"{timings.estimate('train', config.model, left).text()}", flush=True)
        bar = tqdm(total=total, initial=self.step, desc=f"train {config.name}", unit="step",
                   disable=not (self.progress and self.main), dynamic_ncols=True)
        started, first_step = time.monotonic(), self.step
        checkpoint = None
        with bar:  # closed (its line ended) however the loop ends, so an error prints on a line of its own
            while self.step < total:
                record = self.train_step()
                self.log.append(record)
                bar.update(1)
                if isinstance(record, SkipRecord):
                    bar.write(f"skipped {record.reason}")
                    continue
                saved, stop = self._after_step(record, bar, started)
                checkpoint = saved or checkpoint
                if stop:
                    break
        if self.main and self.step > first_step:  # this machine's rate, for the next plan's estimate
            timings.record("train", config.model, time.monotonic() - started,
                           (self.step - first_step) * config.batch_size * config.seq_len)
        if config.report_to != ReportTo.NONE:
            self.accelerator.end_training()
        if config.push_to_hub and self.main and checkpoint is not None and self.step == total:

            print(f"pushed to {push_to_hub(checkpoint, config.push_to_hub)}", flush=True)
        return self.run_dir


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) self-distillation; returns the run folder. Checkpoints go to <run>/checkpoints."""
    return SelfDistillation(config, resume, progress).run()


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


def fused_adamw(model: torch.nn.Module, device: torch.device) -> bool | None:
    """True (torch's fused AdamW kernel: one pass over each parameter, ~5x the default's speed on a 2-core CPU)
    when every parameter is a float tensor and the run is on the CPU or CUDA; None (the default) otherwise."""
    floats = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in model.parameters())
    return True if floats and torch.device(device).type in ("cpu", "cuda") else None


def finished(config: TrainConfig) -> bool:
    """True when the run folder holds the final step of this same config (up to ``MAY_CHANGE_ON_RESUME``)."""
    found = list_checkpoints(config.run_dir())
    if not found or found[-1][0] < config.total_steps:
        return False
    try:
        return not resume_differences(load_training_state(found[-1][1])["config"], config)
    except SdlibError:
        return False


def run_state(config: TrainConfig) -> str:
    """What training ``config`` would do now: reuse a finished run, train, resume, or refuse a folder that holds
    another config's finished run."""
    done = [step for step, _ in list_checkpoints(config.run_dir())]
    if finished(config):
        return "finished, reused"
    if not done:
        return "train"
    if done[-1] < config.total_steps:
        return f"resume from step {done[-1]}"
    return "holds a finished run of another config: refused (another --name, or remove it)"


def refuse_changed_config(run_dir: Path, saved: dict[str, Any], config: TrainConfig) -> None:
    """One line naming every key that differs between the run's saved config and ``config`` (see
    ``MAY_CHANGE_ON_RESUME``), or nothing when the run can go on as it started."""
    differences = resume_differences(saved, config)
    if differences:
        raise SdlibError(f"run folder {run_dir} was started with another config ({format_differences(differences)}); "
                         f"a resume may change only {', '.join(MAY_CHANGE_ON_RESUME)}: start a new run (another --name "
                         "or --output_dir), or put the old values back")


def _launched_as_main() -> bool:
    """True in the main process of a launch (before accelerate starts: its RANK variable, 0 when unset)."""
    return os.environ.get("RANK", "0") == "0"


def _asdict(record) -> dict[str, Any] | None:
    return None if record is None else asdict(record)


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
