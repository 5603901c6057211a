"""What limits FU (data unlearning) on the digits DDPM: evaluation noise vs fine-tuning drift.

Two measurements, both on the shipped digits UNet's null-class view (one thread):

* ``noise``: the ELBO NLL (nats per image) of the 30 forget images and of the held-out images
  under the *pretrained* model with ``--draws`` time/noise draws per image, for three seeds. The
  spread of the means across seeds is the Monte Carlo noise of an absolute NLL (what the
  held-out minus forget "gap" is made of).
* ``finetune``: fine-tune a copy with FU's signed denoising loss at a *fixed* multiplier
  ``--lam`` (``0`` = plain denoising loss on the data; ``0.0199`` = just inside
  :math:`\\lambda_{\\max} = 30/1500`, the retrain-without-A target), Adam at ``--lr``, clip 1,
  batch 64, the digits experiment's seed, and print the **paired** NLL changes (same times and
  noises for the fine-tuned and the pretrained model, 4 draws per image) of the forget set (A),
  150 retain images (R) and the held-out images (H), mean and standard error over images, at
  a few step counts. ``--data retain`` uses the retain set as p0's samples (the former, wrong,
  digits FU statement) for comparison. ``--times log_snr`` draws the training times of the
  denoising loss from the likelihood weighting (the trainer's
  ``primal_options={"time_sampling": "log_snr"}``, the ELBO's own time density) instead of
  uniformly; ``--ema DECAY`` also evaluates the
  trainer's weight average (``ema_decay``, :class:`dualdiff.engine.WeightAverage`, started at
  the pretrained weights), printed as ``ema`` beside the raw ``iterate``.
  Checkpoints at steps 1, 10, 40, 80, 160, 320, ... and the last.

Run::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/digits_fu_diagnostics.py noise
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/digits_fu_diagnostics.py finetune \\
        --lr 2e-4 --lam 0 --steps 40
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/digits_fu_diagnostics.py finetune \\
        --lr 2e-4 --lam 0.0199 --steps 1280 --times log_snr --ema 0.99

Prints one line per checkpoint; nothing is written.
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def _nll(view, x, draws, seed):
    from dualdiff.diffusion.likelihood import elbo

    with torch.no_grad():
        return -elbo(view, x, n_t=draws, generator=torch.Generator().manual_seed(seed)).double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["noise", "finetune"])
    ap.add_argument("--draws", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lam", type=float, default=0.0)
    ap.add_argument("--data", choices=["train", "retain"], default="train")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--times", choices=["uniform", "log_snr"], default="uniform",
                    help="training-time distribution of the denoising loss")
    ap.add_argument("--ema", type=float, default=None,
                    help="also evaluate an EMA of the fine-tuned weights with this decay")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import dualdiff
    from dualdiff import Conditioned, FixedWeightTrainer
    from dualdiff.experiments.digits import DigitsConfig, DigitsSetup

    cfg = DigitsConfig(methods=("FU",))
    setup = DigitsSetup(cfg)
    sets = {"A": setup.forget_images, "R": setup.retain_eval, "H": setup.split.heldout_images}
    seeds = {"A": 101, "R": 102, "H": 103}
    ref = Conditioned(setup.teacher, None)
    if args.mode == "noise":
        for d in args.draws:
            for k in ("A", "H"):
                means = [float(_nll(ref, sets[k], d, s).mean()) for s in (101, 202, 303)]
                print(f"draws={d} {k}: mean NLL for seeds 101/202/303 = "
                      f"{', '.join(f'{m:.2f}' for m in means)}")
        return
    data = setup.split.train_images if args.data == "train" else setup.retain_images
    prob = dualdiff.KLConstrainedProblem(  # type: ignore[call-overload]
        ref, [setup.forget_images], bounds=[1.0], direction="forward", pretrained_data=data,
        training_set_size=setup.n_train,
    )
    student = setup.student()
    model = Conditioned(student, None)
    tr = FixedWeightTrainer(
        prob, model, [args.lam], primal="composed",
        estimator=lambda m, generator=None: torch.zeros(1), batch_size=cfg.batch_size,
        primal_lr=args.lr, grad_clip=cfg.grad_clip, estimate_every=10**9, seed=cfg.seed,
        ema_decay=args.ema, primal_options={"time_sampling": args.times},
    )
    base = {k: _nll(ref, x, 4, seeds[k]) for k, x in sets.items()}
    views = {"iterate": model}
    if tr.averaged_model is not None:
        views["ema"] = tr.averaged_model
    marks = {1, 10, 40, args.steps} | {80 * 2**k for k in range(12)}
    t0 = time.perf_counter()
    for i in range(1, args.steps + 1):
        tr.step()
        if i in marks:
            for vname, view in views.items():
                d = {k: _nll(view, x, 4, seeds[k]) - base[k] for k, x in sets.items()}
                cells = "  ".join(
                    f"d{k}={float(v.mean()):+.2f}+-{float(v.std() / math.sqrt(v.numel())):.2f}"
                    for k, v in d.items()
                )
                print(
                    f"lr={args.lr} lam={args.lam} data={args.data} t={args.times} {vname} "
                    f"step {i}: {cells} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
