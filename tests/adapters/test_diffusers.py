"""The diffusers back-end: schedule maps, prediction types, conditions, LoRA, persistence.

References are built independently of the adapter: the scheduler's own ``add_noise`` and
``betas``, numpy interpolation of the documented ``log abar`` table, central finite
differences, direct UNet calls converted with the DDPM formulas written out here, and ESD's
own parameter-selection rule. Tiny random-config UNets (a few 10^4 parameters, 8x8 images) in
float64 unless a test is about dtypes, so that equalities hold to ~1e-12.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.models.unets.unet_2d import UNet2DOutput

from dualdiff import NoiseSchedule, ScoreModel
from dualdiff.adapters.diffusers import (
    DiffusersSchedule,
    DiffusersScoreModel,
)

F64 = torch.float64
N_CLASSES = 3  # real classes; the null class is index 3 (num_class_embeds = 4)
CROSS_DIM = 8


# ---------------------------------------------------------------------- builders
def tiny_unet(num_class_embeds: int | None = N_CLASSES + 1, seed: int = 0, **kw) -> UNet2DModel:
    torch.manual_seed(seed)
    cfg = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
        num_class_embeds=num_class_embeds,
    )
    cfg.update(kw)
    return UNet2DModel(**cfg).to(F64)


def tiny_cond_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_DIM,
        attention_head_dim=2,
        norm_num_groups=4,
    ).to(F64)


def null_embedding() -> torch.Tensor:
    return torch.randn(3, CROSS_DIM, dtype=F64, generator=torch.Generator().manual_seed(9))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(seed))


def class_model(**kw) -> DiffusersScoreModel:
    return DiffusersScoreModel(tiny_unet(), DDPMScheduler(clip_sample=False), **kw)


def text_model() -> DiffusersScoreModel:
    return DiffusersScoreModel(
        tiny_cond_unet(), DDIMScheduler(clip_sample=False), null_embedding=null_embedding()
    )


def ref_log_abar(scheduler, tau: np.ndarray) -> np.ndarray:
    """The documented interpolation, re-implemented with numpy: log abar piecewise linear in
    t = (tau + 1) / N through (0, 0) and ((k + 1) / N, log abar_k)."""
    abar = scheduler.alphas_cumprod.double().numpy()
    n = abar.size
    grid = np.arange(n + 1) / n
    values = np.concatenate([[0.0], np.log(abar)])
    return np.interp((np.asarray(tau, dtype=np.float64) + 1.0) / n, grid, values)


# ---------------------------------------------------------------------- the schedule
SCHEDULERS = [
    pytest.param(lambda: DDPMScheduler(), id="ddpm-linear"),
    pytest.param(lambda: DDIMScheduler(beta_schedule="scaled_linear",
                                       beta_start=0.00085, beta_end=0.012), id="ddim-scaled"),
    pytest.param(lambda: DDPMScheduler(beta_schedule="squaredcos_cap_v2"), id="ddpm-cosine"),
    pytest.param(lambda: DDPMScheduler(num_train_timesteps=50), id="ddpm-50-steps"),
]


def test_schedule_is_a_noise_schedule():
    sched = DiffusersSchedule.from_scheduler(DDPMScheduler())
    assert isinstance(sched, NoiseSchedule)
    assert sched.t_min == pytest.approx(1e-3) and sched.t_max == 1.0


@pytest.mark.parametrize("make", SCHEDULERS)
def test_schedule_matches_add_noise_at_discrete_steps(make):
    scheduler = make()
    sched = DiffusersSchedule.from_scheduler(scheduler)
    n = scheduler.config.num_train_timesteps
    ks = torch.tensor([0, 1, n // 3, n // 2, n - 2, n - 1])
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(len(ks), 1, 4, 4, dtype=F64, generator=g)
    noise = torch.randn(len(ks), 1, 4, 4, dtype=F64, generator=g)
    t = sched.time(ks)
    assert torch.allclose(t, (ks.double() + 1) / n, rtol=0, atol=1e-15)
    assert torch.allclose(sched.timestep(t), ks.double(), rtol=0, atol=1e-9)
    ours = sched.alpha(t)[:, None, None, None] * x0 + sched.sigma(t)[:, None, None, None] * noise
    theirs = scheduler.add_noise(x0, noise, ks)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", SCHEDULERS)
def test_schedule_interpolates_log_abar_linearly(make):
    scheduler = make()
    sched = DiffusersSchedule.from_scheduler(scheduler)
    n = scheduler.config.num_train_timesteps
    t = torch.tensor([0.0, 0.1 / n, 0.5 / n, 1.0 / n, 1.37 / n, 0.2137, 0.5, 0.7777, 1 - 0.3 / n,
                      1.0], dtype=F64)
    ref = ref_log_abar(scheduler, t.numpy() * n - 1.0)
    assert np.allclose(sched.log_alphas_cumprod(t).numpy(), ref, rtol=1e-13, atol=1e-13)
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    assert np.allclose(alpha.numpy(), np.exp(0.5 * ref), rtol=1e-13)
    assert np.allclose(sigma.numpy(), np.sqrt(1 - np.exp(ref)), rtol=1e-10, atol=1e-13)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-14)
    assert float(alpha[0]) == 1.0 and float(sigma[0]) == 0.0  # t = 0 is the clean data


@pytest.mark.parametrize("make", SCHEDULERS)
def test_schedule_sde_coefficients_by_finite_differences(make):
    scheduler = make()
    sched = DiffusersSchedule.from_scheduler(scheduler)
    n = scheduler.config.num_train_timesteps
    # Interior points of intervals (the coefficients are piecewise constant).
    t = (torch.tensor([0, 3, n // 4, n // 2, n - 1], dtype=F64) + 0.43) / n
    h = 1e-3 / n  # stays inside the interval; log abar is linear there, so FD is exact-ish
    log_a2 = lambda s: 2 * torch.log(sched.alpha(s))  # noqa: E731
    dlog_a2 = (log_a2(t + h) - log_a2(t - h)) / (2 * h)
    dsigma2 = (sched.sigma(t + h) ** 2 - sched.sigma(t - h) ** 2) / (2 * h)
    f = sched.drift_coef(t)
    # f = d log alpha / dt; g^2 = d sigma^2/dt - 2 f sigma^2 (VP SDE marginals).
    assert torch.allclose(f, 0.5 * dlog_a2, rtol=1e-6)
    assert torch.allclose(sched.g(t) ** 2, dsigma2 - 2 * f * sched.sigma(t) ** 2, rtol=1e-5)
    # Against the scheduler's own betas: on (t_k, t_{k+1}], g^2 = -N log(1 - beta_k). diffusers
    # stores alphas_cumprod as a float32 cumprod (relative error ~1e-7 per entry), so the ratio
    # abar_k / abar_{k-1} = 1 - beta_k carries ~1e-7 / beta_k relative error: ~1e-3 at 1e-4.
    k = torch.floor(t * n).long()
    betas = scheduler.betas.double()[k]
    assert torch.allclose(sched.g(t) ** 2, -n * torch.log1p(-betas), rtol=3e-3)


def test_schedule_zero_terminal_snr():
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True)
    assert float(scheduler.alphas_cumprod[-1]) == 0.0
    sched = DiffusersSchedule.from_scheduler(scheduler)
    n = 1000
    assert sched.t_max == pytest.approx((n - 1) / n)
    t = torch.tensor([sched.t_max, 1.0], dtype=F64)  # 1.0 is clamped to t_max
    abar = float(scheduler.alphas_cumprod[n - 2])
    assert torch.allclose(sched.sigma(t), torch.full((2,), math.sqrt(1 - abar), dtype=F64))
    assert bool(torch.isfinite(sched.g(t)).all()) and bool(torch.isfinite(sched.alpha(t)).all())


def test_schedule_keeps_float32():
    sched = DiffusersSchedule.from_scheduler(DDPMScheduler())
    t = torch.tensor([0.1, 0.5], dtype=torch.float32)
    for fn in (sched.alpha, sched.sigma, sched.g, sched.drift_coef, sched.log_snr):
        assert fn(t).dtype == torch.float32
    assert sched.alpha(0.5).dtype == F64


@pytest.mark.parametrize(
    ("table", "kw", "match"),
    [
        ([[0.9, 0.5]], {}, r"shape \(N,\) with N >= 2"),
        ([0.9], {}, r"N >= 2"),
        ([0.5, 0.9], {}, r"non-increasing.*alphas_cumprod\[0\]=0.5"),
        ([1.2, 0.5], {}, r"\(0, 1\]"),
        ([0.9, 0.0, 0.0], {}, r"only the last entry"),
        ([0.9, 0.5], {"t_max": 1.5}, r"'t_max' must lie in \(0, 1.0\]"),
        ([0.9, 0.5], {"t_min": 1.0}, r"t_min < t_max"),
        ([0.9, float("nan")], {}, r"non-finite"),
    ],
)
def test_schedule_bad_tables(table, kw, match):
    with pytest.raises(ValueError, match=match):
        DiffusersSchedule(table, **kw)


def test_schedule_from_scheduler_needs_a_table():
    with pytest.raises(TypeError, match=r"DiffusersSchedule.from_scheduler.*alphas_cumprod"):
        DiffusersSchedule.from_scheduler(object())


# ---------------------------------------------------------------------- predictions
class _ConvertedUNet(UNet2DModel):
    """An eps UNet whose output is rewritten as v or x0 with the DDPM formulas (numpy abar)."""

    kind = "eps"
    reference_scheduler = DDPMScheduler()

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        eps = super().forward(sample, timestep, class_labels=class_labels).sample
        abar = torch.as_tensor(
            np.exp(ref_log_abar(self.reference_scheduler, timestep.detach().cpu().numpy())),
            dtype=sample.dtype,
        ).reshape(-1, 1, 1, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        x0 = (sample - s * eps) / a
        out = {"eps": eps, "v": a * eps - s * x0, "x0": x0}[self.kind]
        return UNet2DOutput(sample=out)


def _converted(kind: str) -> UNet2DModel:
    base = tiny_unet()
    net = _ConvertedUNet.from_config(base.config).to(F64)
    net.load_state_dict(base.state_dict())
    net.kind = kind
    return net


def test_prediction_types_give_the_same_score():
    x = images(4, seed=1)
    labels = torch.tensor([0, 1, 2, 3])
    t = torch.tensor([0.02, 0.3, 0.5005, 0.9], dtype=F64)  # levels and between levels
    scores = {}
    for kind, ptype in (("eps", "epsilon"), ("v", "v_prediction"), ("x0", "sample")):
        sched = DDPMScheduler(clip_sample=False, prediction_type=ptype)
        model = DiffusersScoreModel(_converted(kind), sched)
        assert model.prediction == kind
        scores[kind] = model.score(x, t, cond=labels)
    # The reference: a direct call of the eps UNet, s = -eps / sigma with sigma from numpy.
    base = tiny_unet()
    tau = t * 1000 - 1
    eps = base(x, tau, class_labels=labels).sample
    sigma = np.sqrt(1 - np.exp(ref_log_abar(DDPMScheduler(), tau.numpy())))
    ref = -eps / torch.as_tensor(sigma).reshape(-1, 1, 1, 1)
    for kind, s in scores.items():
        assert torch.allclose(s, ref, rtol=1e-9, atol=1e-9), kind


def test_prediction_type_override_and_unknown():
    unet = tiny_unet()
    sched = DDPMScheduler(clip_sample=False)
    assert DiffusersScoreModel(unet, sched, prediction_type="v_prediction").prediction == "v"
    with pytest.raises(ValueError, match=r"DiffusersScoreModel: unknown prediction_type='flow'"):
        DiffusersScoreModel(unet, sched, prediction_type="flow")


def test_clip_sample_is_applied_explicitly():
    x = 3.0 * images(3, seed=2)  # noisy inputs far outside [-1, 1]: clipping is active
    t = 0.05
    unclipped = DiffusersScoreModel(tiny_unet(), DDPMScheduler(clip_sample=False))
    clipped = DiffusersScoreModel(tiny_unet(), DDPMScheduler())  # the default: clip_sample=True
    assert clipped.clip_sample and not unclipped.clip_sample
    abar = math.exp(float(ref_log_abar(DDPMScheduler(), np.array(t * 1000 - 1))))
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    eps = unclipped.eps(x, t).detach()
    x0 = ((x - s * eps) / a).clamp(-1.0, 1.0)
    assert float(((x - s * eps) / a).abs().max()) > 1.5  # the test exercises the clip
    assert torch.allclose(clipped.eps(x, t), (x - a * x0) / s, rtol=1e-10, atol=1e-10)
    off = DiffusersScoreModel(tiny_unet(), DDPMScheduler(), clip_sample=False)
    assert torch.allclose(off.eps(x, t), eps, rtol=0, atol=0)
    wide = DiffusersScoreModel(tiny_unet(), DDPMScheduler(), clip_sample_range=2.5)
    x0w = ((x - s * eps) / a).clamp(-2.5, 2.5)
    assert torch.allclose(wide.eps(x, t), (x - a * x0w) / s, rtol=1e-10, atol=1e-10)


def test_learned_variance_uses_the_first_half():
    unet = tiny_unet(out_channels=2)
    model = DiffusersScoreModel(unet, DDPMScheduler(clip_sample=False, variance_type="learned"))
    x = images(2)
    out = unet(x, torch.tensor([499.0, 499.0], dtype=F64), class_labels=torch.tensor([3, 3]))
    assert torch.allclose(model.eps(x, 0.5), out.sample[:, :1], rtol=0, atol=1e-14)


# ---------------------------------------------------------------------- timesteps and classes
def test_float_timestep_reaches_the_unet_unrounded():
    model = class_model()
    seen = []
    hook = model.module.time_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        model.eps(images(2), torch.tensor([0.4567, 0.0123], dtype=F64))
        # The pitfall the adapter avoids: a Python float is turned into an integer timestep.
        model.module(images(2), 455.7, class_labels=torch.tensor([0, 0]))
    finally:
        hook.remove()
    assert seen[0].is_floating_point()
    assert torch.allclose(seen[0], torch.tensor([455.7, 11.3], dtype=F64), rtol=0, atol=1e-9)
    assert not seen[1].is_floating_point() and int(seen[1][0]) == 455


def test_eps_is_the_unet_output_at_float_timesteps():
    model = class_model()
    x, t = images(3), torch.tensor([0.0, 0.25, 1.0], dtype=F64)  # t = 0 is clamped to t_min
    direct = model.module(
        x, torch.tensor([0.0, 249.0, 999.0], dtype=F64), class_labels=torch.tensor([1, 1, 1])
    ).sample
    assert torch.allclose(model.eps(x, t, cond=1), direct, rtol=0, atol=1e-14)


def test_null_class_is_the_unconditional_score():
    model = class_model()
    assert model.num_classes == N_CLASSES
    x = images(3)
    s_null = model.score(x, 0.4)
    assert torch.equal(s_null, model.score(x, 0.4, cond=N_CLASSES))
    assert torch.equal(s_null, model.score(x, 0.4, cond=torch.tensor(N_CLASSES)))
    direct = model.module(x, torch.full((3,), 399.0, dtype=F64),
                          class_labels=torch.full((3,), N_CLASSES)).sample
    assert torch.allclose(model.eps(x, 0.4), direct, rtol=0, atol=1e-14)
    assert not torch.allclose(model.score(x, 0.4, cond=0), s_null)  # classes matter
    per_point = model.score(x, 0.4, cond=torch.tensor([0, 3, 1]))
    assert torch.allclose(per_point[1:2], s_null[1:2], rtol=0, atol=1e-12)


def test_unconditional_unet2d():
    model = DiffusersScoreModel(tiny_unet(num_class_embeds=None), DDPMScheduler())
    assert model.num_classes is None
    assert model.score(images(2), 0.3).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"no class embedding.*'cond' must be None"):
        model.score(images(2), 0.3, cond=0)


def test_text_conditioning_and_null_embedding():
    model = text_model()
    assert model.num_classes is None
    x, emb = images(2), torch.randn(5, CROSS_DIM, dtype=F64)
    tau = torch.full((2,), 299.0, dtype=F64)
    direct = model.module(x, tau, encoder_hidden_states=emb.expand(2, 5, CROSS_DIM)).sample
    assert torch.allclose(model.eps(x, 0.3, cond=emb), direct, rtol=0, atol=1e-14)
    null = model.module(x, tau, encoder_hidden_states=null_embedding().expand(2, 3, 8)).sample
    assert torch.allclose(model.eps(x, 0.3), null, rtol=0, atol=1e-14)
    per_sample = torch.randn(2, 5, CROSS_DIM, dtype=F64)
    direct2 = model.module(x, tau, encoder_hidden_states=per_sample).sample
    assert torch.allclose(model.eps(x, 0.3, cond=per_sample), direct2, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------- batched conditions
def _count_forwards(model):
    calls = []
    handle = model.module.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True
    )
    return calls, handle


def test_eps_many_equals_separate_calls_in_one_forward_class():
    model = class_model()
    x, t = images(4, seed=3), torch.tensor([0.1, 0.3, 0.6, 0.95], dtype=F64)
    conds = [None, 0, 2, torch.tensor([1, 0, 3, 2])]
    calls, handle = _count_forwards(model)
    try:
        many = model.eps_many(x, t, conds)
    finally:
        handle.remove()
    assert calls == [len(conds) * 4]  # ONE forward of batch k * n
    assert many.shape == (4, 4, 1, 8, 8)
    for i, c in enumerate(conds):
        assert torch.allclose(many[i], model.eps(x, t, c), rtol=1e-10, atol=1e-12)
    scores = model.score_many(x, t, conds)
    for i, c in enumerate(conds):
        assert torch.allclose(scores[i], model.score(x, t, c), rtol=1e-10, atol=1e-10)


def test_eps_many_equals_separate_calls_in_one_forward_text():
    model = text_model()
    x = images(3, seed=4)
    g = torch.Generator().manual_seed(5)
    concepts = [torch.randn(3, CROSS_DIM, dtype=F64, generator=g) for _ in range(2)]
    conds = [None, *concepts]
    calls, handle = _count_forwards(model)
    try:
        many = model.eps_many(x, 0.5, conds)
    finally:
        handle.remove()
    assert calls == [9]
    for i, c in enumerate(conds):
        assert torch.allclose(many[i], model.eps(x, 0.5, c), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"eps_many: every condition must have the same"):
        model.eps_many(x, 0.5, [None, torch.randn(7, CROSS_DIM, dtype=F64)])


# ---------------------------------------------------------------------- LoRA
def _dsm_step(model, lr=1e-2):
    """One Adam step of a denoising loss through the model's own eps (changes the adapter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(4, 1, 8, 8, dtype=F64, generator=g)
    noise = torch.randn(4, 1, 8, 8, dtype=F64, generator=g)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=F64)
    a = model.schedule.alpha(t).reshape(-1, 1, 1, 1)
    s = model.schedule.sigma(t).reshape(-1, 1, 1, 1)
    loss = ((model.eps(a * x0 + s * noise, t, 1 if model.num_classes else None) - noise) ** 2)
    loss.mean().backward()
    opt.step()
    return params


@pytest.mark.parametrize("kind", ["class", "text"])
def test_lora_teacher_is_the_pretrained_model(kind):
    model = class_model() if kind == "class" else text_model()
    x, t = images(3, seed=6), torch.tensor([0.2, 0.5, 0.8], dtype=F64)
    cond = 2 if kind == "class" else None
    before = model.eps(x, t, cond).detach()
    base_before = {k: v.clone() for k, v in model.module.state_dict().items()}
    names = model.add_lora(rank=2, target_modules="esd-x" if kind == "text" else None)
    assert names and all(("attn2" in n) for n in names) == (kind == "text")
    teacher = model.teacher()
    assert isinstance(teacher, ScoreModel) and list(teacher.parameters()) == []
    # LoRA B = 0 at initialisation: student == teacher == the model before LoRA.
    assert torch.allclose(model.eps(x, t, cond), before, rtol=0, atol=1e-14)
    assert torch.allclose(teacher.eps(x, t, cond), before, rtol=0, atol=1e-14)
    trained = _dsm_step(model)
    assert trained and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    after = model.eps(x, t, cond).detach()
    assert float((after - before).abs().max()) > 1e-6  # the student moved, not the teacher:
    assert torch.allclose(teacher.eps(x, t, cond), before, rtol=0, atol=1e-14)
    sigma = model.schedule.sigma(t).reshape(-1, 1, 1, 1)
    assert torch.allclose(teacher.score(x, t, cond), -before / sigma, rtol=1e-12, atol=1e-12)
    # Base weights unchanged (peft renames W to base_layer.W).
    state = model.module.state_dict()
    for k, v in base_before.items():
        key = k if k in state else k.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias")
        assert torch.equal(state[key], v), k
    # The teacher leaves the student's adapter on and its requires_grad flags as they were.
    lora_params = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    lora_params[0][1].requires_grad_(False)
    teacher.eps(x, t, cond)
    assert not lora_params[0][1].requires_grad and lora_params[1][1].requires_grad
    assert torch.allclose(model.eps(x, t, cond), after, rtol=0, atol=1e-14)


def test_lora_teacher_eps_many():
    model = class_model()
    x = images(2)
    before = model.eps_many(x, 0.5, [None, 0]).detach()
    model.add_lora(rank=2, target_modules="esd-u")
    _dsm_step(model)
    assert torch.allclose(model.teacher().eps_many(x, 0.5, [None, 0]), before, rtol=0, atol=1e-14)
    assert not torch.allclose(model.eps_many(x, 0.5, [None, 0]), before, atol=1e-6)


def test_full_finetuning_teacher_is_a_frozen_copy():
    model = class_model()
    x = images(2)
    with pytest.raises(ValueError, match=r"teacher: the model has no LoRA adapter.*frozen_copy"):
        model.teacher()
    frozen = model.frozen_copy()
    before = frozen.eps(x, 0.5).detach()
    assert not any(p.requires_grad for p in frozen.parameters())
    model.freeze_except("esd-u")
    _dsm_step(model)
    assert not torch.allclose(model.eps(x, 0.5), before, atol=1e-6)
    assert torch.equal(frozen.eps(x, 0.5), before)


def test_lora_bad_inputs():
    model = class_model()
    with pytest.raises(ValueError, match=r"add_lora: parameter 'rank' must be an int >= 1, got 0"):
        model.add_lora(0)
    with pytest.raises(ValueError, match=r"add_lora: parameter 'alpha' must be a number > 0"):
        model.add_lora(2, alpha=-1.0)
    with pytest.raises(ValueError, match=r"'target_modules' \('esd-x'\) matched no"):
        model.add_lora(2, "esd-x")  # UNet2DModel has no cross-attention
    with pytest.raises(TypeError, match=r"'target_modules' must be None, a preset"):
        model.add_lora(2, 3)  # type: ignore[arg-type]
    model.add_lora(2, ["to_q", "to_v"])
    with pytest.raises(ValueError, match=r"add_lora: this model already has a LoRA adapter"):
        model.add_lora(2)


# ---------------------------------------------------------------------- parameter subsets
def _esd_reference(unet, method):
    """ESD's selection rule (esd_sd.py): parameters of Linear/Conv2d modules by 'attn2'."""
    names = set()
    for name, module in unet.named_modules():
        if module.__class__.__name__ in ("Linear", "Conv2d"):
            if (method == "esd-x") == ("attn2" in name):
                names |= {f"{name}.{n}" for n, _ in module.named_parameters()}
    return names


def test_esd_presets_match_esd_selection():
    model = text_model()
    x_names = {n for n, _ in model.trainable_parameters("esd-x")}
    u_names = {n for n, _ in model.trainable_parameters("esd-u")}
    assert x_names == _esd_reference(model.module, "esd-x") and x_names
    assert u_names == _esd_reference(model.module, "esd-u")
    assert not x_names & u_names
    # Norms and embedding tables are in neither (ESD trains Linear/Conv2d weights only).
    all_names = {n for n, _ in model.named_parameters()}
    assert any("norm" in n for n in all_names - x_names - u_names)
    trained = model.freeze_except("esd-x")
    assert set(trained) == x_names
    assert {n for n, p in model.named_parameters() if p.requires_grad} == x_names


def test_patterns_regex_and_lora_scope():
    model = text_model()
    sel = model.trainable_parameters(r"^conv_out\.")
    assert {n for n, _ in sel} == {"conv_out.weight", "conv_out.bias"}
    assert len(model.trainable_parameters("all")) == len(list(model.parameters()))
    model.add_lora(2, "esd-x")
    lora_x = {n for n, _ in model.trainable_parameters("esd-x")}
    assert lora_x and all("lora_" in n and "attn2" in n for n in lora_x)
    with pytest.raises(ValueError, match=r"matched none of the .* LoRA adapter parameters"):
        model.trainable_parameters(r"^conv_out\.")


def test_pattern_bad_inputs():
    model = class_model()
    with pytest.raises(ValueError, match=r"'pattern'='esd-x' matched none.*no cross-attention"):
        model.trainable_parameters("esd-x")
    with pytest.raises(ValueError, match=r"'pattern'='\(' is neither a preset"):
        model.freeze_except("(")
    with pytest.raises(TypeError, match=r"trainable_parameters: parameter 'pattern' must be a"):
        model.trainable_parameters(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- persistence
def test_save_and_load_round_trip_with_lora(tmp_path):
    model = class_model()
    x, t = images(3, seed=7), torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    model.add_lora(rank=3, target_modules=r"attentions\.0\.to_(q|v)$", alpha=6.0)
    _dsm_step(model)
    model.save_pretrained(tmp_path / "m")
    loaded = DiffusersScoreModel.from_pretrained(tmp_path / "m")
    assert loaded.has_lora and loaded.dtype == F64 and loaded.num_classes == N_CLASSES
    assert isinstance(loaded.scheduler, DDPMScheduler) and not loaded.clip_sample
    for c in (None, 1):
        assert torch.allclose(loaded.eps(x, t, c), model.eps(x, t, c), rtol=0, atol=1e-14)
        assert torch.allclose(loaded.teacher().eps(x, t, c), model.teacher().eps(x, t, c),
                              rtol=0, atol=1e-14)
    # The saved UNet is the base model in the plain diffusers format (the teacher).
    base = UNet2DModel.from_pretrained(tmp_path / "m" / "unet", torch_dtype=F64)
    tau = t * 1000 - 1
    direct = base(x, tau, class_labels=torch.full((3,), N_CLASSES)).sample
    assert torch.allclose(model.teacher().eps(x, t), direct, rtol=0, atol=1e-14)


def test_save_and_load_round_trip_text(tmp_path):
    model = DiffusersScoreModel(
        tiny_cond_unet(), DDIMScheduler(prediction_type="v_prediction"),
        null_embedding=null_embedding(),
    )
    model.save_pretrained(tmp_path)
    loaded = DiffusersScoreModel.from_pretrained(tmp_path)
    assert isinstance(loaded.scheduler, DDIMScheduler)
    assert loaded.prediction == "v" and loaded.clip_sample and not loaded.has_lora
    assert torch.equal(loaded.null_embedding, null_embedding())
    x = images(2)
    assert torch.allclose(loaded.score(x, 0.3), model.score(x, 0.3), rtol=0, atol=1e-14)


def test_from_pretrained_needs_the_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"from_pretrained: no dualdiff_adapter.json"):
        DiffusersScoreModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- bad inputs
def test_constructor_bad_inputs():
    sched = DDPMScheduler()
    with pytest.raises(TypeError, match=r"DiffusersScoreModel: parameter 'unet' must be a"):
        DiffusersScoreModel(torch.nn.Linear(2, 2), sched)
    with pytest.raises(TypeError, match=r"parameter 'scheduler' must be a diffusers scheduler"):
        DiffusersScoreModel(tiny_unet(), object())
    with pytest.raises(ValueError, match=r"thresholding=True .* is not supported"):
        DiffusersScoreModel(tiny_unet(), DDPMScheduler(thresholding=True))
    with pytest.raises(ValueError, match=r"time_embedding_type='fourier' is not supported"):
        DiffusersScoreModel(tiny_unet(time_embedding_type="fourier"), sched)
    with pytest.raises(ValueError, match=r"out_channels=3 must equal in_channels=1"):
        DiffusersScoreModel(tiny_unet(out_channels=3), sched)
    with pytest.raises(ValueError, match=r"'null_embedding' is required for a UNet2DCondition"):
        DiffusersScoreModel(tiny_cond_unet(), sched)
    with pytest.raises(ValueError, match=r"'null_embedding' must be a floating tensor of shape"):
        DiffusersScoreModel(tiny_cond_unet(), sched, null_embedding=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"'null_embedding' is for UNet2DConditionModel"):
        DiffusersScoreModel(tiny_unet(), sched, null_embedding=torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"'clip_sample_range' must be a finite number > 0"):
        DiffusersScoreModel(tiny_unet(), sched, clip_sample_range=0.0)
    with pytest.raises(TypeError, match=r"'clip_sample' must be a bool or None"):
        DiffusersScoreModel(tiny_unet(), sched, clip_sample="yes")  # type: ignore[arg-type]


def test_call_bad_inputs():
    model = class_model()
    x = images(2)
    with pytest.raises(TypeError, match=r"DiffusersScoreModel.score: parameter 'x' must be a"):
        model.score(np.zeros((2, 1, 8, 8)), 0.5)
    with pytest.raises(ValueError, match=r"score: parameter 'x' must be a floating tensor of "
                                         r"shape \(n, 1, H, W\), got shape \(2, 64\)"):
        model.score(x.reshape(2, 64), 0.5)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\] \(3 is the null class\), got 4"):
        model.score(x, 0.5, cond=4)
    with pytest.raises(TypeError, match=r"'cond' must be None \(the null class\), an int"):
        model.score(x, 0.5, cond=1.5)
    with pytest.raises(TypeError, match=r"an integer tensor of labels, got Tensor of dtype"):
        model.score(x, 0.5, cond=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"must have shape \(\) or \(2,\), got \(3,\)"):
        model.score(x, 0.5, cond=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"parameter 't' must be a scalar or have shape \(2,\)"):
        model.score(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"eps_many: parameter 'conds' must hold at least one"):
        model.eps_many(x, 0.5, [])
    with pytest.raises(TypeError, match=r"eps_many: parameter 'conds' must be a list or tuple"):
        model.eps_many(x, 0.5, torch.tensor([0, 1]))
    text = text_model()
    with pytest.raises(ValueError, match=r"encoder_hidden_states\) must have shape \(L, 8\)"):
        text.score(x, 0.5, cond=torch.zeros(4, 5, 8, dtype=F64))
    with pytest.raises(TypeError, match=r"'cond' must be None \(the null embedding\) or a float"):
        text.score(x, 0.5, cond=1)


def test_float32_unet_with_float64_inputs():
    unet = tiny_unet().to(torch.float32)
    model = DiffusersScoreModel(unet, DDPMScheduler(clip_sample=False))
    x = images(2)
    s = model.score(x, 0.5)
    assert s.dtype == F64  # cast back to the input's dtype
    ref = class_model().score(x, 0.5)
    assert torch.allclose(s, ref, rtol=1e-4, atol=1e-4)  # float32 network round-off


# ---------------------------------------------------------------------- optional import
def _run(code: str) -> subprocess.CompletedProcess:
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)


def test_import_dualdiff_never_imports_diffusers():
    res = _run(
        "import sys, dualdiff, dualdiff.adapters\n"
        "bad = [m for m in ('diffusers', 'peft') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert 'DiffusersScoreModel' in dir(dualdiff.adapters)\n"
        "print('ok')"
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_missing_diffusers_names_the_extra():
    res = _run(
        "import sys\n"
        "sys.modules['diffusers'] = None  # makes 'import diffusers' raise ImportError\n"
        "from dualdiff.adapters import DiffusersScoreModel\n"
    )
    assert res.returncode != 0
    hint = "pip install 'dualdiff-unlearning[diffusers]'"
    assert "ImportError" in res.stderr and hint in res.stderr


# ---------------------------------------------------------------------- dualdiff's own tools
def test_dsm_loss_and_samplers_accept_the_adapter():
    from dualdiff import denoising_score_matching_loss, sample_ode, sample_sde

    model = class_model()
    g = torch.Generator().manual_seed(12)
    x0 = torch.randn(3, 1, 8, 8, dtype=F64, generator=g)
    noise = torch.randn(3, 1, 8, 8, dtype=F64, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    loss = denoising_score_matching_loss(model, x0, t=t, noise=noise, reduction="none", cond=2)
    # Reference: the UNet called directly at tau = N t - 1, abar from the numpy interpolation.
    abar = torch.as_tensor(np.exp(ref_log_abar(DDPMScheduler(), (t * 1000 - 1).numpy())))
    a, s = abar.sqrt().reshape(-1, 1, 1, 1), (1 - abar).sqrt().reshape(-1, 1, 1, 1)
    eps = model.module(a * x0 + s * noise, t * 1000 - 1, class_labels=torch.full((3,), 2)).sample
    ref = ((eps - noise) ** 2).flatten(1).mean(1)
    assert torch.allclose(loss, ref, rtol=1e-10, atol=1e-12)
    for sampler in (sample_sde, sample_ode):
        out = sampler(model, (2, 1, 8, 8), steps=4, generator=torch.Generator().manual_seed(0),
                      dtype=F64, cond=1)
        assert out.shape == (2, 1, 8, 8) and bool(torch.isfinite(out).all())


def test_weight_average_of_a_lora_unet_trains_only_the_adapter_copy(tmp_path):
    """``ema_decay`` on a LoRA UNet: the average is a working ScoreModel whose adapter follows
    the EMA recursion (written out here) while its base weights stay the pretrained ones, and
    a checkpoint restores it."""
    from dualdiff import Conditioned, KLConstrainedProblem, PrimalDualTrainer

    teacher = class_model()
    data, forget = images(12, seed=1), images(3, seed=2)
    prob = KLConstrainedProblem(Conditioned(teacher, None), [forget], bounds=[0.5],
                                direction="forward", pretrained_data=data,
                                training_set_size=12)

    def make():
        student = class_model()
        student.add_lora(rank=2)
        return PrimalDualTrainer(prob, Conditioned(student, None), primal="composed",
                                 estimator=lambda m, generator=None: torch.zeros(1),
                                 batch_size=4, primal_lr=1e-2, dual_lr=0.01,
                                 estimate_every=2, seed=5, ema_decay=0.7)

    tr = make()
    lora = {n: p for n, p in tr.module.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    ref = {n: p.detach().clone() for n, p in lora.items()}
    for _ in range(4):
        tr.step()
        ref = {n: 0.7 * ref[n] + 0.3 * lora[n].detach() for n in ref}
    avg_state = tr.averaged_model.module.state_dict()
    for n in ref:
        torch.testing.assert_close(avg_state[n], ref[n], rtol=1e-12, atol=1e-14)
    base = {k: v for k, v in teacher.module.state_dict().items()}
    for k, v in avg_state.items():
        if "lora_" not in k:
            key = k.replace(".base_layer", "")
            assert torch.equal(v, base[key]), k
    x = images(2, seed=3)
    e_avg = tr.averaged_model.eps(x, 0.5)
    assert e_avg.shape == x.shape and not torch.allclose(e_avg, tr.model.eps(x, 0.5))
    tr.save_checkpoint(tmp_path / "lora.pt")
    again = make()
    again.load_checkpoint(tmp_path / "lora.pt")
    assert torch.equal(again.averaged_model.eps(x, 0.5), e_avg)
