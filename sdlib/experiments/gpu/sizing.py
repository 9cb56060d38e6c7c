"""The batch a training stage of the GPU study can afford: sequences per step from the measured time per
sequence and the time left."""

from __future__ import annotations

from sdlib.experiments.throughput import StepTiming


def sized_batch(exact: StepTiming, sampled: StepTiming, batch: int, steps: int, seconds: float
                ) -> tuple[StepTiming, int]:
    """(the timing to use, sequences per step) so that ``steps`` steps fit in ``seconds``: the exact zeta1 when a
    step of at least one of its measured micro-batches fits, else the sampled one; at most ``batch`` sequences and
    at least one, a multiple of the micro-batch when larger than it."""
    def per_sequence(timing: StepTiming) -> float:
        return timing.seconds_per_micro_batch / timing.micro_batch

    fits = int(seconds / steps / per_sequence(exact))
    use = exact if fits >= exact.micro_batch or exact is sampled else sampled
    n = max(1, min(batch, int(seconds / steps / per_sequence(use))))
    micro = use.micro_batch
    return use, (n // micro) * micro if n > micro else n


