"""The resolver on one tiny random-init model per architecture family (built offline from configs).

For each: the lens at l = L equals the model's own logits (transformers' head code, soft-cap and scales
included), both conventions' states come out of one forward pass, the chunked loss equals the plain
reference (values and gradients), one training step runs, and a pruned copy saves and loads in plain
transformers.
"""

import pytest
import torch

from references.loss import reference_self_distillation_loss
from sdlib import models
from sdlib.lens import lens_logits
from sdlib.loss import TeacherHead, self_distillation_loss
from sdlib.parts import decoder_parts
from sdlib.pruning import keep_layers
from sdlib.states import forward_states
from sdlib.train.config import load_config

ARCHITECTURES = list(models.TINY_MODELS)
SHAPE = dict(num_layers=3, hidden_size=32, vocab_size=300)


def _load(name, **kw):
    model, tok = models.load(name, **{**SHAPE, **kw})
    if name == "tiny-gemma2":
        model.config.final_logit_softcapping = 2.0  # small enough that the cap bends the logits in these tests
    return model, tok


def test_every_listed_architecture_is_covered():
    wanted = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "gpt_neox"}
    assert wanted <= set(models.TINY_ARCHITECTURES.values())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_lens_at_last_layer_is_the_models_logits_from_one_forward_pass(name):
    model, _ = _load(name)
    parts = decoder_parts(model)
    calls = []
    handle = parts.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    ids = torch.randint(3, 259, (2, 9))
    with torch.no_grad():
        states = forward_states(model, ids, keep_logits=True)
        handle.remove()
        assert len(calls) == 1  # both conventions and the logits from one pass
        assert states.L == parts.num_layers - 1 == 2
        for convention in ("normed", "pre_norm"):
            seq = states[convention]
            assert len(seq) == parts.num_layers + 1
            assert torch.allclose(lens_logits(model, seq, states.L, convention), states.logits, atol=1e-5, rtol=1e-5)
        assert torch.allclose(parts.norm(states.pre_norm_last), states.normed_last, atol=1e-6)
        assert states.h(-1) is states.inner[0] and states.h(1) is states.inner[2]
        logits = model(ids).logits
        assert torch.allclose(states.logits, logits, atol=1e-6)
    if name == "tiny-gemma2":
        assert parts.transform.softcap == 2.0 and float(logits.abs().max()) < 2.0
    if name in ("tiny-cohere", "tiny-granite"):
        assert parts.transform.scale == 0.5


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("last_state", ["normed", "pre_norm"])
def test_chunked_loss_equals_reference(name, last_state):
    student, _ = _load(name, tie_word_embeddings=name.endswith("gemma2"))
    teacher, _ = _load(name, seed=1)
    student, teacher = student.double(), teacher.double()
    parts, tparts = decoder_parts(student), decoder_parts(teacher)
    ids = torch.randint(3, 259, (2, 7))
    with torch.no_grad():
        t_hidden = tparts.backbone(input_ids=ids).last_hidden_state
    head = TeacherHead(t_hidden, tparts.lm_head.weight, tparts.lm_head.bias, tparts.transform)
    results = []
    for fn in (reference_self_distillation_loss, self_distillation_loss):
        student.zero_grad()
        out = fn(forward_states(student, ids).pre_norm, parts.norm, parts.lm_head, head, alpha=0.5,
                 last_state=last_state, chunk_size=5, logit_transform=parts.transform)
        out.total.backward()
        results.append((out, {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (got, grads) = results
    assert got.total.item() == pytest.approx(ref.total.item(), rel=1e-9)
    assert torch.allclose(got.kl_per_layer, ref.kl_per_layer, rtol=1e-8, atol=1e-14)
    assert ref_grads.keys() == grads.keys()
    for n in ref_grads:
        assert torch.allclose(grads[n], ref_grads[n], rtol=1e-7, atol=1e-12), n


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_one_training_step_runs(name, text_file, tmp_path):
    from sdlib.train import train

    config = load_config(None, {"model": name, "model_options": SHAPE, "data": str(text_file),
                                "eval_text": str(text_file), "seq_len": 16, "batch_size": 2, "micro_batch": 2,
                                "max_tokens": 32, "eval_windows": 1, "eval_window_len": 16, "chunk_size": 8,
                                "output_dir": str(tmp_path / "run")})
    run = train(config, progress=False)
    records = [line for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(records) == 1
    trained, _ = models.load(str(run))
    base, _ = _load(name)
    changed = [n for (n, p), (_, q) in zip(trained.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert changed  # the step moved the weights


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_pruned_copy_saves_and_loads_in_plain_transformers(name, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = _load(name)
    pruned = keep_layers(model, [0, 2])
    pruned.save_pretrained(tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert loaded.config.num_hidden_layers == 2
    ids = torch.randint(3, 259, (1, 8))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, pruned(ids).logits, atol=1e-5)
    # it is the original without layer 1: its second layer holds the original's third layer's weights
    kept, original = decoder_parts(loaded).layers[1], decoder_parts(model).layers[2]
    for (n, p), (_, q) in zip(kept.named_parameters(), original.named_parameters(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("kind", ["gpt2", "opt"])
def test_other_layouts_are_placed(kind):
    """GPT-2 (transformer.h, ln_f) and OPT (layers and final norm under model.decoder) resolve too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = {"gpt2": dict(n_layer=2, n_embd=16, n_head=2), "opt": dict(num_hidden_layers=2, hidden_size=16,
             num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16)}[kind]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, vocab_size=300, **shape)).eval()
    models.check_head(model)
    parts = decoder_parts(model)
    assert parts.num_layers == 2
    with torch.no_grad():
        states = forward_states(model, torch.randint(3, 259, (1, 6)), keep_logits=True)
        assert torch.allclose(lens_logits(model, states.pre_norm, 1, "pre_norm"), states.logits, atol=1e-5)
    pruned = keep_layers(model, [1])
    assert decoder_parts(pruned).num_layers == 1 and pruned.config.num_hidden_layers == 1
