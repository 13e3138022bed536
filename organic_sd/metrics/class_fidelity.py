"""Class fidelity without labels: a class-conditional denoiser teacher used as a classifier.

A sample x0 (clamped to the teacher's pixel range) is noised at a few fixed probes, (t, noise)
pairs the same for every sample: x_t = sqrt(ab[t]) x0 + sqrt(1 - ab[t]) noise. The teacher
predicts eps at each probe given each class; the class whose predictions miss the true noise
least (mean squared error over probes and pixels) is the class the teacher sees in the sample.
Fidelity is the share of samples classified as the class they were asked for, per class and
overall. A denoiser is a density model per class, so this is its Bayes-style classifier, and it
needs no labelled data set and no other network.

The default probes (t = 300..700, two noises each) were chosen on 8-step DDIM samples of the
MNIST DiT drawn from seed 100: below t = 200 the image decides eps and the class hardly matters,
above 800 the noise swamps the image. Measure with other seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PROBE_T = (300, 400, 500, 600, 700)  # steps of a 1000-step schedule
PROBE_NOISES = 2  # noise draws per step
PROBE_SEED = 20261203  # the probes' noise: fixed, so a sample's class never depends on its batch


def make_probes(sample_shape, ts=PROBE_T, noises: int = PROBE_NOISES, seed: int = PROBE_SEED):
    """-> t (P,) int64 and noise (P, C, H, W) float32 CPU, P = len(ts) * noises, drawn from `seed`."""
    if not ts or noises < 1:
        raise ValueError(f"need at least one probe step and noise, got ts={tuple(ts)}, noises={noises}")
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor(list(ts), dtype=torch.int64).repeat_interleave(noises)  # (P,)
    return t, torch.randn((len(t), *sample_shape), generator=g)


def class_table(teacher) -> tuple[list[str], torch.Tensor]:
    """A class-conditional teacher -> its class names and (K, *cond_shape) cond row of each class."""
    classes = getattr(teacher, "classes", None)
    if not classes:
        raise ValueError(f"teacher {getattr(teacher, 'id', teacher)!r} is not class-conditional (it has no "
                         "`classes`): it cannot classify samples")
    return [str(c) for c in classes], teacher.encode_text([str(c) for c in classes]).float()


def class_errors(teacher, images: torch.Tensor, ts=PROBE_T, noises: int = PROBE_NOISES, seed: int = PROBE_SEED,
                 batch: int = 64) -> torch.Tensor:
    """(N, C, H, W) samples in teacher units -> (N, K) float64 mean eps error of the teacher given each class."""
    _, table = class_table(teacher)  # (K, *cond_shape)
    K = len(table)
    shape = tuple(teacher.sample_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"images must be (N, {', '.join(map(str, shape))}) samples of the teacher, got "
                         f"{tuple(images.shape)}")
    t_p, noise_p = make_probes(shape, ts, noises, seed)  # (P,), (P, C, H, W)
    ab = teacher.alphas_cumprod  # (T,) float64
    if int(t_p.max()) >= len(ab):
        raise ValueError(f"probe steps must be < {len(ab)} (the teacher's schedule), got {tuple(ts)}")
    lo, hi = teacher.pixel_range
    # few-step samples overshoot the clean range: score the image the teacher could have made
    x0 = images.detach().float().cpu().clamp(lo, hi)
    out = torch.zeros(len(x0), K, dtype=torch.float64)
    for b0 in range(0, len(x0), batch):
        xb = x0[b0:b0 + batch]  # (b, C, H, W)
        b = len(xb)
        cond = table.repeat(b, *([1] * (table.ndim - 1)))  # (b K, *cond_shape): sample-major, class-minor
        for t, noise in zip(t_p.tolist(), noise_p):
            a = float(ab[t])
            x_t = a ** 0.5 * xb + (1 - a) ** 0.5 * noise  # (b, C, H, W)
            eps = teacher.eps(x_t.repeat_interleave(K, 0), torch.full((b * K,), t), cond).float().cpu()
            err = ((eps - noise) ** 2).flatten(1).mean(1).view(b, K)  # (b, K)
            out[b0:b0 + b] += err.double() / len(t_p)
    return out


@dataclass
class FidelityReport:
    """Samples asked for class `asked` and classified as `got`: the share that match, per class and overall."""

    classes: list[str]
    asked: torch.Tensor  # (N,) int64
    got: torch.Tensor  # (N,) int64
    per_class: list[float] = field(init=False)  # share of class-k samples classified as k (nan: none asked)
    count: list[int] = field(init=False)  # samples asked per class
    overall: float = field(init=False)  # share of all samples classified as asked

    def __post_init__(self):
        K = len(self.classes)
        hit = (self.asked == self.got).double()
        self.count = torch.bincount(self.asked, minlength=K).tolist()
        self.per_class = [float(hit[self.asked == k].mean()) if self.count[k] else float("nan") for k in range(K)]
        self.overall = float(hit.mean()) if len(hit) else float("nan")

    @property
    def confusion(self) -> torch.Tensor:
        """(K, K) int64 counts: row = class asked, column = class the teacher saw."""
        K = len(self.classes)
        return torch.bincount(self.asked * K + self.got, minlength=K * K).view(K, K)

    @property
    def worst(self) -> float:
        """The lowest per-class share (over the classes asked for)."""
        return min(v for v, n in zip(self.per_class, self.count) if n)

    def to_dict(self) -> dict:
        """Plain numbers for a JSON report."""
        return {"overall": self.overall, "worst_class": self.worst, "n": len(self.asked),
                "per_class": dict(zip(self.classes, self.per_class)), "count": dict(zip(self.classes, self.count)),
                "confusion": self.confusion.tolist()}

    def summary(self) -> str:
        """Two lines: overall and worst, then the share per class."""
        per = "  ".join(f"{c}: {v:.2f}" for c, v, n in zip(self.classes, self.per_class, self.count) if n)
        return (f"class fidelity {self.overall:.3f} over {len(self.asked)} samples (worst class {self.worst:.2f})\n"
                f"  {per}")


def class_fidelity(teacher, images: torch.Tensor, asked, **probe_kw) -> FidelityReport:
    """(N, C, H, W) samples, (N,) classes they were asked for -> a FidelityReport (probe_kw: see class_errors)."""
    classes, _ = class_table(teacher)
    asked = torch.as_tensor(asked).to(torch.int64).cpu().reshape(-1)
    if len(asked) != len(images):
        raise ValueError(f"asked must hold one class per sample ({len(images)}), got {len(asked)}")
    if len(asked) and (int(asked.min()) < 0 or int(asked.max()) >= len(classes)):
        raise ValueError(f"asked classes must be in 0..{len(classes) - 1}, got {int(asked.min())}..{int(asked.max())}")
    got = class_errors(teacher, images, **probe_kw).argmin(1)
    return FidelityReport(classes, asked, got)


def teacher_samples(teacher, per_class: int, steps: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (K per_class, C, H, W) DDIM samples of every class from seeded CPU noise, and their (K per_class,) classes."""
    from organic_sd.teachers.ddim import ddim_sample

    _, table = class_table(teacher)
    K = len(table)
    labels = torch.arange(K).repeat(per_class)  # 0, 1, ..., K-1, 0, 1, ...: a cut-off run stays balanced
    noise = torch.randn((K * per_class, *teacher.sample_shape), generator=torch.Generator().manual_seed(seed))
    return ddim_sample(teacher, noise, steps, table[labels]).cpu(), labels


def per_class_distribution(ref_images: torch.Tensor, ref_classes, gen_images: torch.Tensor, gen_classes,
                           classes, pixel_range=(-1.0, 1.0), **kw) -> dict[str, dict]:
    """KID x1000 / precision / recall (metrics/samples.py) of the generated samples of each class against the
    reference samples of that class: {class name: distribution_report} (kw: pool, k, paired)."""
    from organic_sd.metrics.samples import distribution_report

    ref_c, gen_c = torch.as_tensor(ref_classes).reshape(-1), torch.as_tensor(gen_classes).reshape(-1)
    if len(ref_c) != len(ref_images) or len(gen_c) != len(gen_images):
        raise ValueError(f"one class per sample: {len(ref_images)} reference samples with {len(ref_c)} classes, "
                         f"{len(gen_images)} generated with {len(gen_c)}")
    out = {}
    for k, name in enumerate(classes):
        r, g = ref_images[ref_c == k], gen_images[gen_c == k]
        if len(r) or len(g):  # a class asked of neither set is left out; of one set only, an error below
            out[str(name)] = distribution_report(r, g, pixel_range, **kw)
    return out
