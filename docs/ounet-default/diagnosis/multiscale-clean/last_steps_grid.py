"""Q for the first k DDIM steps and the teacher for the rest (and the reverse), 64 samples: python last_steps_grid.py SEED OUT.png TEACHER_PATH"""
import sys, torch, numpy as np
sys.path.insert(0, "bench")
from ounet_hybrid import mixed_path
from organic_sd.ounet.model import OUNet
from organic_sd.ounet import generate as gen
from organic_sd.teachers import load_denoiser
from organic_sd.teachers.ddim import seeded_noise
from PIL import Image
torch.set_num_threads(2)
u = OUNet.load("mnist"); T = load_denoiser("ddpm-mnist:" + sys.argv[3])
noise = seeded_noise(u.sample_shape, 64, int(sys.argv[1]))
rows = {"teacher": mixed_path(T, T, 0, noise, 8), "clone6_teacher2": mixed_path(u, T, 6, noise, 8),
        "clone7_teacher1": mixed_path(u, T, 7, noise, 8),
        "clone": mixed_path(u, u, 8, noise, 8), "teacher6_clone2": mixed_path(T, u, 6, noise, 8)}
ims = []
for k, x in rows.items():
    g = gen.grid_image(gen.to_unit(x, u.config.pixel_range), 8)
    ims.append(np.pad(g, ((0, 0), (0, 12)) + ((0, 0),) * (g.ndim - 2), constant_values=255))
    print(k, gen.psnr_unit(gen.to_unit(x, u.config.pixel_range), gen.to_unit(rows["teacher"], u.config.pixel_range)))
im = Image.fromarray(np.concatenate(ims, 1)); im = im.resize((im.width * 2, im.height * 2), Image.NEAREST); im.save(sys.argv[2])
