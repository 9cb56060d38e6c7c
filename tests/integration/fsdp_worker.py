"""Run by tests/integration/test_train.py::test_fsdp_on_two_cpu_processes under torchrun (2 processes, gloo):
the recipe's ``Distiller`` sharded by torch FSDP (each decoder layer its own unit, the root holding embedding,
final norm and lm_head, as configs/accelerate/fsdp.yaml sets it up) gives the gradients of one unsharded
process on the whole batch. Rank 0 writes the comparison to the JSON file named on the command line."""

import functools
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp import ShardingStrategy
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

from sdlib.models import load
from sdlib.parts import decoder_parts
from sdlib.train.config import load_config
from sdlib.train.recipe import Distiller, teacher_head


def tiny():
    return load("tiny-llama", num_layers=3, hidden_size=64, vocab_size=512, seed=0)[0]


def main(out: str, config_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = load_config(config_path, {"lens_samples": 0})
    student, teacher = tiny(), tiny()
    ids = torch.randint(0, 259, (2 * world, 16), generator=torch.Generator().manual_seed(1))
    layer = type(decoder_parts(student).layers[0])
    sharded = FSDP(Distiller(student, config), device_id=torch.device("cpu"), use_orig_params=True,
                   sharding_strategy=ShardingStrategy.FULL_SHARD,
                   auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={layer}))
    mine = ids[2 * rank:2 * rank + 2]
    sharded(mine, None, teacher=teacher_head(teacher, mine, None)).total.backward()  # FSDP averages over ranks
    with FSDP.summon_full_params(sharded, with_grads=True):
        grads = {n.replace("_fsdp_wrapped_module.", ""): p.grad.clone() for n, p in sharded.named_parameters()
                 if p.grad is not None}
    if rank == 0:
        whole = Distiller(tiny(), config)
        whole(ids, None, teacher=teacher_head(teacher, ids, None)).total.backward()
        expected = {n: p.grad for n, p in whole.named_parameters() if p.grad is not None}
        worst = {n: float((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)) for n, g in expected.items()
                 if n in grads}
        with open(out, "w") as f:
            json.dump({"world": world, "missing": sorted(set(expected) - set(grads)), "worst": worst}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
