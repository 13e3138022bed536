"""Throwaway: Q's x0 at t < 300 stretched about mid-grey, x0' = clamp(g x0), as a sharper stroke: does it read better?"""
import sys, torch
from pathlib import Path
from organic_sd.ounet.model import OUNet
from organic_sd.teachers import load_denoiser
from organic_sd.ounet.distribution import measure, write_grid
torch.set_num_threads(2)
q = OUNet.load("mnist"); T = load_denoiser("ddpm-mnist:" + sys.argv[1]); g = float(sys.argv[2])
ab_all = q.alphas_cumprod
class Gain:
    alphas_cumprod, sample_shape, device = q.alphas_cumprod, q.sample_shape, q.device
    def eps(self, x, t, cond=None):
        e = q.eps(x, t)
        if int(t.reshape(-1)[0]) >= 300:
            return e
        ab = ab_all.to(x.device)[t].float()[:, None, None, None]
        x0 = ((x - (1 - ab).sqrt() * e) / ab.sqrt() * g).clamp(-0.5, 0.5)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()
rep, unit = measure(Gain(), T, 500, 7002, q.config.pixel_range, 8)
print(g, {k: round(v, 4) for k, v in rep["ounet"].items()})
write_grid(Path(f"gain{g}.png"), unit, show=64)
