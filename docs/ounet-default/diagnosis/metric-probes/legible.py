"""Throwaway probe: a 'nameable' share by k nearest labelled digits (the class-conditional DiT's own samples, labelled by
the class asked): a sample counts when >= 4 of its 5 nearest labelled digits (cosine of the [0,1] pixels) agree and
its nearest one is as close as 95% of the labelled digits' own nearest neighbours are."""
import sys, time, torch, numpy as np
sys.path.insert(0, "bench")
from organic_sd.teachers import load_denoiser
from organic_sd.metrics.class_fidelity import teacher_samples
from organic_sd.ounet.model import OUNet
from organic_sd.ounet import generate as gen
from organic_sd.ounet.distribution import draw
from organic_sd.teachers.ddim import seeded_noise
from ounet_hybrid import mixed_path
torch.set_num_threads(2)
t0 = time.time()
dit = load_denoiser("dit-mnist-cond:" + sys.argv[2])
ref, asked = teacher_samples(dit, 200, 8, 1)
held, held_asked = teacher_samples(dit, 20, 8, 2)
print("DiT samples", ref.shape, float(ref.min()), float(ref.max()), f"{time.time() - t0:.0f} s", flush=True)
lo, hi = float(ref.amin()), float(ref.amax())
dit_range = (-1.0, 1.0) if lo < -0.75 else (-0.5, 0.5)
def feat(x, pr):
    u = gen.to_unit(x, pr).flatten(1).float()
    u = u - u.mean(1, keepdim=True)
    return u / u.norm(dim=1, keepdim=True).clamp_min(1e-6)
R = feat(ref, dit_range); labels = torch.as_tensor(asked).long()
S = R @ R.T; S.fill_diagonal_(-2)
own_nn = S.max(1).values
tau = float(torch.quantile(own_nn, 0.05))
def nameable(x, pr, k=5, need=4):
    s = feat(x, pr) @ R.T
    top = s.topk(k, 1)
    votes = torch.nn.functional.one_hot(labels[top.indices], 10).sum(1)
    ok = (votes.max(1).values >= need) & (top.values[:, 0] >= tau)
    return float(ok.float().mean()), float((votes.max(1).values >= need).float().mean())
print("tau", tau, "DiT held-out", nameable(held, dit_range), flush=True)
q = OUNet.load("mnist"); T = load_denoiser("ddpm-mnist:" + sys.argv[1])
pr = q.config.pixel_range
noise = seeded_noise(q.sample_shape, 500, 7002)
sets = {"teacher 50": draw(T, noise, 50), "teacher 8": draw(T, noise, 8), "Q 8": draw(q, noise, 8),
        "Q6 + teacher 2": torch.cat([mixed_path(q, T, 6, noise[i:i + 100], 8) for i in range(0, 500, 100)])}
sets["shuffled teacher 8"] = sets["teacher 8"].flatten(1)[:, torch.randperm(784, generator=torch.Generator().manual_seed(0))].view(-1, 1, 28, 28)
for name, x in sets.items():
    print(f"{name:>20}: nameable {nameable(x, pr)}", flush=True)

