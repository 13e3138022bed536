import sys, torch
sys.path.insert(0, "bench")
from ounet_hybrid import run_steps
from organic_sd.ounet.model import OUNet
from organic_sd.teachers import load_denoiser
from organic_sd.teachers.ddim import seeded_noise, ddim_timesteps
from organic_sd.metrics.denoising import denoising_error
from organic_sd.ounet import generate as gen
torch.set_num_threads(2)
u = OUNet.load("mnist"); T = load_denoiser("ddpm-mnist:" + sys.argv[1])
noise = seeded_noise(u.sample_shape, 500, 7002); pr = u.config.pixel_range
ab = u.alphas_cumprod; ts = ddim_timesteps(len(ab), 8)
def path(owners):  # owners: 8 models, one per step
    out = []
    for i in range(0, 500, 100):
        x = noise[i:i + 100]
        for k, m in enumerate(owners):
            x = run_steps(m, x, ab, ts, [k])
        out.append(x)
    return torch.cat(out)
ref = path([T] * 8)
for name, owners in {"Q": [u] * 8, "teacher at t=250 only": [u] * 6 + [T, u], "teacher at t=125 only": [u] * 7 + [T],
                     "teacher at both": [u] * 6 + [T, T]}.items():
    x = path(owners)
    print(f"{name:>24}: low-noise {float(denoising_error(T, x, pr).mean()):.4f}  PSNR vs teacher {gen.psnr_unit(gen.to_unit(x, pr), gen.to_unit(ref, pr)):.2f}", flush=True)
