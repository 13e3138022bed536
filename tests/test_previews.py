import numpy as np
import pytest
import torch
from PIL import Image

from organic_sd import cli
from organic_sd.previews import DiffusersPreview, Preview
from conftest import build_tiny_pipeline, random_ovae, sd_pipe


def _uint8(x):
    return ((x[0].clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_preview_every_scale_and_bad_args(tmp_path):
    v = random_ovae()
    seen = []
    p = Preview(v, on_image=lambda step, img: seen.append((step, img.size)), png_dir=tmp_path / "png",
                gif=tmp_path / "a.gif", every=2, scale=2)
    for k in range(5):
        p.show(k, torch.randn(1, 4, 3, 5))
    assert seen == [(0, (80, 48)), (2, (80, 48)), (4, (80, 48))]
    assert sorted(f.name for f in (tmp_path / "png").iterdir()) == ["step_000.png", "step_002.png", "step_004.png"]
    assert p.save_gif() == tmp_path / "a.gif" and Image.open(tmp_path / "a.gif").n_frames == 3
    grid = Preview(v).show(0, torch.randn(4, 4, 2, 2))  # a batch becomes a 2 x 2 grid with 1-pixel gaps
    assert grid.size == (2 * 17 + 1, 2 * 17 + 1)
    with pytest.raises(ValueError, match="every and scale must be >= 1"):
        Preview(v, every=0)
    with pytest.raises(ValueError, match="decoder must be an OVAE or a callable"):
        Preview(3)


def test_diffusers_callback_previews_the_x0_estimate(tmp_path):
    pytest.importorskip("diffusers")
    from organic_sd.ovae.diffusers_vae import OVAEDiffusers

    v = random_ovae(seed=2)
    pipe = sd_pipe(build_tiny_pipeline(tmp_path / "sd"), OVAEDiffusers.from_ovae(v))

    def run(callback=None):
        return pipe("a cat", num_inference_steps=3, height=32, width=40, output_type="latent",
                    generator=torch.Generator().manual_seed(0), callback_on_step_end=callback).images

    plain = run()
    seen = []
    preview = DiffusersPreview(v, on_image=lambda step, img: seen.append((step, np.asarray(img))),
                               png_dir=tmp_path / "png", gif=tmp_path / "steps.gif").attach(pipe)
    z = run(preview)
    assert torch.equal(z, plain)  # previews change nothing in the sampling
    assert [s for s, _ in seen] == [0, 1, 2] and seen[0][1].shape == (32, 40, 3)
    assert len(list((tmp_path / "png").iterdir())) == 3 and Image.open(tmp_path / "steps.gif").n_frames == 3
    # DDIM's last x0 estimate is the final sample: the last preview is the O-VAE's decode of it
    assert np.abs(seen[-1][1].astype(int) - _uint8(v.decode(z))).max() <= 1  # the conv form: ~1e-6 apart
    assert not np.array_equal(seen[0][1], seen[-1][1])
    # a callback that was not attached wraps the scheduler at its first call and still previews every step
    late = DiffusersPreview(OVAEDiffusers.from_ovae(v), on_image=lambda step, img: seen.append((step, np.asarray(img))))
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # a fresh, unwrapped scheduler
    seen.clear()
    assert torch.equal(run(late), plain)
    assert [s for s, _ in seen] == [0, 1, 2]
    assert np.abs(seen[-1][1].astype(int) - _uint8(v.decode(z))).max() <= 1
    # DPM-Solver returns no x0 estimate: each preview is the O-VAE's decode of that step's latents
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    seen.clear()
    z = run(DiffusersPreview(v, on_image=lambda step, img: seen.append((step, np.asarray(img)))))
    assert [s for s, _ in seen] == [0, 1, 2]
    assert np.abs(seen[-1][1].astype(int) - _uint8(v.decode(z))).max() <= 1


def test_osd_generate_preview(tmp_path, capsys):
    out, gif, folder = tmp_path / "g.png", tmp_path / "steps.gif", tmp_path / "steps"
    assert cli.main(["generate", "--steps", "3", "--n", "4", "--out", str(out), "--preview", str(gif)]) == 0
    assert "x0 estimate at each of the 3 steps" in capsys.readouterr().out
    assert Image.open(gif).n_frames == 3
    assert cli.main(["generate", "--steps", "3", "--n", "4", "--out", str(out), "--preview", str(folder)]) == 0
    pngs = sorted(folder.iterdir())
    assert [p.name for p in pngs] == ["step_000.png", "step_001.png", "step_002.png"]
    # DDIM's last x0 estimate is the final sample: the last preview is the output grid (to a rounding step)
    last, final = np.asarray(Image.open(pngs[-1])).astype(int), np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert last.shape == final.shape and np.abs(last - final).max() <= 1
    assert np.abs(np.asarray(Image.open(pngs[0])).astype(int) - final).mean() > 1
