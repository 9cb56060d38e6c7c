import pytest
import torch

from references.loss import reference_self_distillation_loss
from sdlib import models
from sdlib.errors import SdlibError
from sdlib.loss import (
    TeacherHead,
    layer_weights,
    relative_step,
    self_distillation_loss,
)
from sdlib.parts import decoder_parts
from sdlib.states import forward_states
from sdlib.types import KLDirection


def test_layer_weights():
    w = layer_weights(16, 0.25)
    assert w.shape == (16,)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (w[1:] > w[:-1]).all()
    assert torch.allclose(w[1:] / w[:-1], torch.full((15,), torch.e ** 0.25, dtype=torch.float64))
    assert torch.allclose(layer_weights(5, 0.0), torch.full((5,), 0.2, dtype=torch.float64))
    with pytest.raises(SdlibError):
        layer_weights(0, 0.25)


def _setup(name, seed_teacher=1, dtype=torch.float64, tie=False):
    student, _ = models.load(name, num_layers=3, hidden_size=32, vocab_size=300, tie_word_embeddings=tie, dtype=dtype)
    teacher, _ = models.load(name, num_layers=3, hidden_size=32, vocab_size=300, seed=seed_teacher, dtype=dtype)
    ids = torch.randint(0, 259, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    return student, teacher, ids, mask


def _run(fn, student, teacher, ids, mask, teacher_as="head", **kw):
    student.zero_grad()
    acc, tacc = decoder_parts(student), decoder_parts(teacher)
    with torch.no_grad():
        t_hidden = tacc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    target = TeacherHead(t_hidden, tacc.lm_head.weight) if teacher_as == "head" else tacc.lm_head(t_hidden)
    states = forward_states(student, ids, mask).pre_norm
    parts = fn(states, acc.norm, acc.lm_head, target, attention_mask=mask, **kw)
    parts.total.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return parts, grads


@pytest.mark.parametrize("name", models.TINY_DEFAULTS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("last_state", ["normed", "pre_norm"])
def test_chunked_loss_equals_reference(name, direction, last_state):
    student, teacher, ids, mask = _setup(name, tie=(direction == "reverse"))
    kw = dict(alpha=0.7, k=0.25, kl_direction=direction, last_state=last_state)
    ref, ref_grads = _run(reference_self_distillation_loss, student, teacher, ids, mask, **kw)
    for chunk in (3, 1024):
        got, grads = _run(self_distillation_loss, student, teacher, ids, mask, chunk_size=chunk, **kw)
        assert got.total.item() == pytest.approx(ref.total.item(), rel=1e-5)
        assert torch.allclose(got.kl_per_layer, ref.kl_per_layer, rtol=1e-5, atol=1e-12)
        assert torch.allclose(got.zeta2_per_layer, ref.zeta2_per_layer, rtol=1e-5)
        assert set(grads) == set(ref_grads)
        for n in ref_grads:
            scale = ref_grads[n].abs().max().clamp_min(1e-30)
            assert ((grads[n] - ref_grads[n]).abs().max() / scale).item() < 1e-5, n


def test_chunked_loss_float32_and_precomputed_teacher():
    student, teacher, ids, mask = _setup("tiny-llama", dtype=torch.float32)
    ref, ref_grads = _run(reference_self_distillation_loss, student, teacher, ids, mask)
    got, grads = _run(self_distillation_loss, student, teacher, ids, mask, teacher_as="logits", chunk_size=5)
    assert got.total.item() == pytest.approx(ref.total.item(), rel=1e-5)
    for n in ref_grads:
        scale = ref_grads[n].abs().max()
        assert ((grads[n] - ref_grads[n]).abs().max() / scale).item() < 1e-5


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_nonnegative_and_zero_for_identical_teacher(direction):
    student, _, ids, mask = _setup("tiny-llama")
    different, _ = _run(self_distillation_loss, student, _setup("tiny-llama")[1], ids, mask, kl_direction=direction)
    assert (different.kl_per_layer >= 0).all() and different.zeta1 > 0
    same, _ = _run(self_distillation_loss, student, student, ids, mask, kl_direction=direction)
    assert same.kl_per_layer[-1].item() == pytest.approx(0.0, abs=1e-12)  # last layer IS the teacher's output
    assert (same.kl_per_layer >= -1e-12).all()


def test_zeta2_sums_layers_1_to_L_only():
    torch.manual_seed(0)
    d = 6
    states = [torch.randn(1, 4, d, dtype=torch.float64) for _ in range(5)]  # h_-1, h_0..h_3 (L = 3)
    norm = torch.nn.Identity()
    head = torch.nn.Linear(d, 10, bias=False).double()
    teacher = torch.randn(1, 4, 10, dtype=torch.float64)
    parts = self_distillation_loss(states, norm, head, teacher, alpha=1.0, k=0.5, last_state="pre_norm")
    w = layer_weights(4, 0.5).double()
    terms = [relative_step(states[l], states[l + 1]).mean() for l in range(1, 4)]  # l = 1..3
    assert parts.zeta2_per_layer.shape == (3,)
    assert parts.zeta2.item() == pytest.approx(sum(w[l] * terms[l - 1] for l in range(1, 4)).item(), rel=1e-10)
    # changing the embedding h_-1 changes nothing in zeta2
    states2 = [torch.randn_like(states[0])] + states[1:]
    parts2 = self_distillation_loss(states2, norm, head, teacher, alpha=1.0, k=0.5, last_state="pre_norm")
    assert parts2.zeta2.item() == pytest.approx(parts.zeta2.item(), rel=1e-12)


def test_normed_convention_uses_final_norm_in_zeta2():
    student, teacher, ids, mask = _setup("tiny-llama")
    acc = decoder_parts(student)
    with torch.no_grad():
        acc.norm.weight.mul_(3.0)  # makes normed and raw h_L differ in scale
    a, _ = _run(self_distillation_loss, student, teacher, ids, mask, last_state="normed")
    b, _ = _run(self_distillation_loss, student, teacher, ids, mask, last_state="pre_norm")
    assert torch.allclose(a.zeta2_per_layer[:-1], b.zeta2_per_layer[:-1])
    assert not torch.isclose(a.zeta2_per_layer[-1], b.zeta2_per_layer[-1])


def test_bad_options():
    student, teacher, ids, mask = _setup("tiny-llama")
    for kw, message in (({"kl_direction": "sideways"}, "KL direction"), ({"last_state": "middle"}, "last state"),
                        ({"alpha": -1.0}, "alpha must be a finite number >= 0"),
                        ({"alpha": float("inf")}, "alpha must be a finite"), ({"k": float("nan")}, "k must be finite"),
                        ({"chunk_size": 0}, "chunk_size must be >= 1"),
                        ({"lens_samples": -1}, "lens_samples must be >= 0"),
                        ({"alpah": 1.0}, "unknown loss setting")):
        with pytest.raises(SdlibError, match=message):
            _run(self_distillation_loss, student, teacher, ids, mask, **kw)
    with pytest.raises(SdlibError, match="reference loss computes zeta1 exactly"):
        _run(reference_self_distillation_loss, student, teacher, ids, mask, lens_samples=2)


def test_settings_and_keywords_give_the_same_loss():
    """A LossSettings object and the same values as keywords are one loss; keywords override the object."""
    from sdlib.loss import LossSettings

    student, teacher, ids, mask = _setup("tiny-llama")
    settings = LossSettings(alpha=0.5, k=0.5, kl_direction="reverse", zeta2_form="cosine", chunk_size=3)
    a, _ = _run(self_distillation_loss, student, teacher, ids, mask, settings=settings)
    b, _ = _run(self_distillation_loss, student, teacher, ids, mask, alpha=0.5, k=0.5, kl_direction="reverse",
                zeta2_form="cosine", chunk_size=3)
    c, _ = _run(self_distillation_loss, student, teacher, ids, mask, settings=settings, alpha=0.0)
    assert a.total.item() == b.total.item() and settings.kl_direction is KLDirection.REVERSE
    assert c.total.item() == pytest.approx(a.zeta1.item(), rel=1e-12) and c.total.item() != a.total.item()


@pytest.mark.parametrize("form", ["cosine", "monotonicity"])
def test_zeta2_forms_equal_reference_and_their_definition(form):
    from sdlib.metrics import layer_movement, soft_non_monotonicity

    student, teacher, ids, _ = _setup("tiny-llama")
    mask = torch.ones_like(ids)
    kw = dict(alpha=0.5, zeta2_form=form)
    ref, ref_grads = _run(reference_self_distillation_loss, student, teacher, ids, mask, **kw)
    got, grads = _run(self_distillation_loss, student, teacher, ids, mask, chunk_size=4, **kw)
    assert got.total.item() == pytest.approx(ref.total.item(), rel=1e-6)
    for n in ref_grads:
        assert torch.allclose(grads[n], ref_grads[n], rtol=1e-5, atol=1e-10), n
    with torch.no_grad():
        D = layer_movement(forward_states(student, ids).normed).double()
    expected = ((layer_weights(3, 0.25).double()[1:] * D[1:]).sum() if form == "cosine"
                else soft_non_monotonicity(D))
    assert got.zeta2.item() == pytest.approx(expected.item(), rel=1e-5)


def test_monotone_curve_has_zero_monotonicity_penalty():
    from sdlib.metrics import monotonicity, soft_non_monotonicity

    falling = torch.tensor([0.5, 0.3, 0.2, 0.2, 0.1], dtype=torch.float64)
    rising = torch.tensor([0.1, 0.3, 0.2, 0.6], dtype=torch.float64)
    assert soft_non_monotonicity(falling).item() == 0
    assert soft_non_monotonicity(rising).item() == pytest.approx(1 - monotonicity(rising))


def test_sampled_zeta1_is_unbiased():
    """The estimate is sum_l (c_l / m) KL_l with c ~ Multinomial(m, w): each draw equals that sum of the exact
    per-layer KLs, and E[c_l / m] = w_l, so its expectation is zeta1 for any KL values."""
    from sdlib.loss import sample_lens_weights

    student, teacher, ids, mask = _setup("tiny-llama")
    exact, _ = _run(self_distillation_loss, student, teacher, ids, mask, alpha=0.0)
    w = layer_weights(3, 0.25).double()  # the three lens layers
    g = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(60):
        replay = torch.Generator()
        replay.set_state(g.get_state())  # the weights this draw will use, drawn again from the same state
        drawn = sample_lens_weights(w, 2, replay)
        zeta1 = _run(self_distillation_loss, student, teacher, ids, mask, alpha=0.0, lens_samples=2,
                     generator=g)[0].zeta1.item()
        computed = drawn > 0
        assert zeta1 == pytest.approx(float((drawn[computed] * exact.kl_per_layer[computed].double()).sum()), rel=1e-9)
        draws.append(zeta1)
    draws = torch.tensor(draws, dtype=torch.float64)
    assert abs(draws.mean().item() - exact.zeta1.item()) < 4 * (draws.std() / len(draws) ** 0.5).item()
    assert draws.std() > 0  # it is an estimate, not the exact value
    counts = torch.stack([sample_lens_weights(w, 3, g) for _ in range(20000)]).mean(0)
    assert torch.allclose(counts, w, atol=0.01)
    one, _ = _run(self_distillation_loss, student, teacher, ids, mask, alpha=0.0, lens_samples=1, generator=g)
    assert one.computed_layers.sum() == 1 and one.kl_per_layer.isnan().sum() == 2
    layer = int(one.computed_layers.nonzero())
    assert one.zeta1.item() == pytest.approx(exact.kl_per_layer[layer].item(), rel=1e-9)


@pytest.mark.parametrize("last_state", ["normed", "pre_norm"])
def test_zeta2_equals_the_papers_formula_written_out(last_state):
    """zeta2 = sum_{l=1..L} w_l mean_t ||h_l - h_{l-1}||^2 / ||h_{l-1}||^2, w_l = exp(k l) / sum_i exp(k i), from
    transformers' own hidden states (h_L after the final norm) or a hook of this test's on the last layer (raw)."""
    import math

    student, teacher, ids, mask = _setup("tiny-llama")
    mask = torch.ones_like(ids)
    k = 0.4
    raw = {}
    layers = student.model.layers
    handle = layers[-1].register_forward_hook(lambda m, a, o: raw.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        hs = list(student(ids, output_hidden_states=True).hidden_states)  # h_-1 .. h_L (normed)
    handle.remove()
    if last_state == "pre_norm":
        hs[-1] = raw["x"]
    L = len(layers) - 1
    weights = [math.exp(k * l) for l in range(L + 1)]
    weights = [w / sum(weights) for w in weights]
    per_layer = []
    for l in range(1, L + 1):
        prev, nxt = hs[l], hs[l + 1]  # h_{l-1}, h_l
        per_layer.append(float((((nxt - prev) ** 2).sum(-1) / (prev ** 2).sum(-1)).mean()))
    expected = sum(weights[l] * per_layer[l - 1] for l in range(1, L + 1))
    parts, _ = _run(self_distillation_loss, student, teacher, ids, mask, alpha=1.0, k=k, last_state=last_state)
    assert parts.zeta2.item() == pytest.approx(expected, rel=1e-9)
    assert parts.zeta2_per_layer.tolist() == pytest.approx(per_layer, rel=1e-9)
