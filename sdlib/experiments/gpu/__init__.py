"""The GPU study: the paper's recipe on a paper-family model, sized to one short GPU window (``records``: what it
returns; ``sizing``: the batch that fits the time; ``runner``: the stages; ``report``: the headline lines, and the
results brought home).

Stages, in order of information per minute (``configs/gpu/study.yaml`` names the configs):

1. ``throughput``: one timed micro-batch of the training configuration with the largest micro-batch that
   fits, for the exact zeta1 and for zeta1 from 4 sampled lens layers; tokens/s, step time and MFU.
2. ``baseline``: S in both conventions (and of the per-token median curve) on the default measurement text,
   LAMBADA and WikiText at every layer on the full tasks.
3. ``recipe``: the paper's recipe, with as many steps (up to its 10M tokens) as the time left allows at the
   measured step time; then the same measurement and evaluation, and paired statistics against the baseline.
4. ``cosine``: arm B, beyond this paper: the same with the angular zeta2 of the same authors' follow-up
   (``zeta2_form: cosine``), paired against the same baseline.

Both training stages keep the paper's 76 optimizer steps and size the batch (sequences per step) to the time
they get, from the measured time per sequence; exact zeta1 when at least one probe micro-batch of sequences fits
in each step, else zeta1 from 4 sampled lens layers. The probe of the largest micro-batch that fits starts at 16
sequences. A machine without network gets the models and data from ``sdlib bundle``.

Each stage writes its numbers into ``<work>/study.json`` as soon as it ends, and ``publish`` copies what exists
to ``<out>`` (at most 8 files: ``study.json``, ``log.txt``, ``records.tar.gz``), so a run cut short still
returns what finished. A stage whose results exist in ``<work>`` is skipped, so a second call on the same
(still warm) machine continues. ``--dry-run`` runs every stage on the CPU with tiny models in seconds.
"""

