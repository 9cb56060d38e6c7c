#!/usr/bin/env bash
# One short GPU session: unit tests, the CUDA/bf16 training path on tiny-llama, and step timings.
# Writes everything to $OUT (or ./build/gpu) so the numbers come back with the device name.
set -uo pipefail
OUT=${OUT:-build/gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false SDLIB_BUILD_DIR=/tmp/sdlib-build
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/unit 2>&1 | tail -5 | tee "$OUT/unit.txt"
timeout 60 python3 - <<'PY' 2>&1 | tee "$OUT/cuda_loss.txt"
import torch
from sdlib import models
from sdlib.loss import TeacherHead, reference_self_distillation_loss, self_distillation_loss
from sdlib.states import forward_states
for autocast in (False, True):
    s, _ = models.load("tiny-llama", num_layers=4, vocab_size=4096, device="cuda")
    t, _ = models.load("tiny-llama", num_layers=4, vocab_size=4096, seed=1, device="cuda")
    ids = torch.randint(0, 4096, (4, 128), device="cuda")
    out = []
    for fn in (reference_self_distillation_loss, self_distillation_loss):
        s.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            th = models.decoder_parts(t).backbone(input_ids=ids).last_hidden_state.detach()
            p = fn(forward_states(s, ids).pre_norm, s.model.norm, s.lm_head, TeacherHead(th, t.lm_head.weight))
            p.total.backward()
        out.append((float(p.total.detach()), s.lm_head.weight.grad.clone()))
    (a, ga), (b, gb) = out
    print(f"autocast={autocast}: loss ref {a:.6f} chunked {b:.6f} rel {abs(a-b)/abs(a):.2e}; "
          f"lm_head grad rel {((ga-gb).abs().max()/ga.abs().max()).item():.2e}")
PY
printf 'the cat sat on the mat and the dog slept by the fire. %.0s' {1..400} > /tmp/corpus.txt
timeout 90 python3 -m sdlib train configs/tiny.yaml --output_dir /tmp/gpu-tiny --data /tmp/corpus.txt \
    --eval_text /tmp/corpus.txt --device cuda --precision bf16 2>&1 | tr '\r' '\n' | grep -E "S normed|error|run folder" | tee "$OUT/tiny_train.txt"
tail -1 /tmp/gpu-tiny/log.jsonl | cut -c1-400 >> "$OUT/tiny_train.txt"
for mb in 2 8; do
    timeout 120 python3 bench/train_step.py --shape llama-3.2-1b --micro-batch $mb --seq-len 1024 --chunk 4096 \
        --steps 3 $([ $mb = 8 ] && echo --losses chunked) 2>&1 | grep "{" | tee -a "$OUT/bench_1b.jsonl"
done
