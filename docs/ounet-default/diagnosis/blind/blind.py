"""Blind legibility grid: 48 cells of the teacher (STEPS steps) and 48 of Q (8 steps, other noise), shuffled:
    python blind.py TEACHER_PATH TEACHER_SEED Q_SEED STEPS OUT  (writes OUT.png and OUT_key.json)"""
import sys, json, torch, numpy as np
from organic_sd.ounet.model import OUNet
from organic_sd.ounet import generate as gen
from organic_sd.ounet.distribution import draw
from organic_sd.teachers import load_denoiser
from organic_sd.teachers.ddim import seeded_noise
from PIL import Image
torch.set_num_threads(2)
u = OUNet.load("mnist"); T = load_denoiser("ddpm-mnist:" + sys.argv[1])
with torch.no_grad():
    a = draw(T, seeded_noise(u.sample_shape, 48, int(sys.argv[2])), int(sys.argv[4]))
    b = draw(u, seeded_noise(u.sample_shape, 48, int(sys.argv[3])), 8)
x = torch.cat([a, b]); who = np.array(["teacher"] * 48 + ["Q"] * 48)
perm = np.random.default_rng(int(sys.argv[2])).permutation(96)
g = gen.grid_image(gen.to_unit(x[perm], u.config.pixel_range), 12)
im = Image.fromarray(g); im = im.resize((im.width * 3, im.height * 3), Image.NEAREST); im.save(sys.argv[5] + ".png")
json.dump(who[perm].tolist(), open(sys.argv[5] + "_key.json", "w"))
