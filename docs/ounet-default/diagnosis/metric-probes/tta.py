"""Throwaway diagnostic: Q's eps at the last steps (t < 300) averaged over flips/rotations of its input (the per-pixel
maps are not equivariant, so their errors partly differ per transform): variance or bias?"""
import sys, torch
from pathlib import Path
from organic_sd.ounet.model import OUNet
from organic_sd.teachers import load_denoiser
from organic_sd.ounet.distribution import measure, write_grid
torch.set_num_threads(2)
q = OUNet.load("mnist"); T = load_denoiser("ddpm-mnist:" + sys.argv[1])
n_tf = int(sys.argv[2])
TF = [(lambda x: x, lambda x: x), (lambda x: x.flip(3), lambda x: x.flip(3)),
      (lambda x: x.transpose(2, 3), lambda x: x.transpose(2, 3)), (lambda x: x.flip(2), lambda x: x.flip(2))][:n_tf]
class Avg:
    alphas_cumprod, sample_shape, device = q.alphas_cumprod, q.sample_shape, q.device
    def eps(self, x, t, cond=None):
        if int(t.reshape(-1)[0]) >= 300:
            return q.eps(x, t)
        return sum(inv(q.eps(f(x), t)) for f, inv in TF) / len(TF)
rep, unit = measure(Avg(), T, 500, 7002, q.config.pixel_range, 8)
print(n_tf, {k: round(v, 4) for k, v in rep["ounet"].items()}, "teacher", round(rep["teacher"]["denoise_err"], 4))
write_grid(Path(f"tta{n_tf}.png"), unit, show=64)
