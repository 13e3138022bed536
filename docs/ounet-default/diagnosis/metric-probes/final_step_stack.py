"""Throwaway: a low-noise stack evolved only for the final step (t < 160: the 8-step path's t = 125), replacing Q's low
stack + clean stage there; Q elsewhere."""
import sys, json, torch
from pathlib import Path
sys.path.insert(0, "bench")  # from the repository root: python PATH/final_step_stack.py TEACHER_PATH STORE HIDDEN SECONDS SPLIT
from ounet_split_paths import SplitPath
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.low import fit_low
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.teachers import load_denoiser
from organic_sd.ounet.distribution import measure, write_grid
torch.set_num_threads(2)
q = OUNet.load("mnist"); store = DenoiserStore.open(sys.argv[2]); T = load_denoiser("ddpm-mnist:" + sys.argv[1])
hidden, secs, split = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
spec, rep = fit_low(OUNet.load("mnist"), store, split=split, target="x0", hidden=(hidden,), max_seconds=secs,
                    max_rows=600_000, eval_records=512, population=100, seed=0)
print({k: rep[k] for k in rep if k in ("kept", "before", "after")}, flush=True)
model = SplitPath(q, spec, split)
r, unit = measure(model, T, 500, 7002, q.config.pixel_range, 8)
print(hidden, split, {k: round(v, 4) for k, v in r["ounet"].items()}, flush=True)
write_grid(Path(f"spec{hidden}_{split}.png"), unit, show=64)
