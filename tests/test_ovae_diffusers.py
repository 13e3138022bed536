import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from conftest import build_tiny_pipeline, random_ovae, sd_pipe  # noqa: E402

from organic_sd.ovae.diffusers_vae import OVAEDiffusers  # noqa: E402


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd"))


def test_interface_equals_the_ovae():
    v = random_ovae()
    d = OVAEDiffusers.from_ovae(v)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    z = v.encode(x)
    assert torch.equal(d.encode(x).latents, z) and torch.equal(d.encode(x, return_dict=False)[0], z)
    assert torch.equal(d.decode(z).sample, v.decode(z)) and torch.equal(d.decode(z, return_dict=False)[0], v.decode(z))
    assert torch.equal(d(x).sample, v(x))
    c = d.config
    assert (c.latent_channels, c.scaling_factor, c.shift_factor, c.force_upcast) == (4, 1.0, 0.0, False)
    assert 2 ** (len(c.block_out_channels) - 1) == 8  # what pipelines take as the VAE's scale factor
    assert d.dtype == torch.float32 and d.device.type == "cpu"
    assert d.to_ovae().decoder.config.window == 3


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    v = random_ovae(hidden=(3,), seed=4)
    d = OVAEDiffusers.from_ovae(v)
    d.save_pretrained(tmp_path / "ovae")
    assert json.loads((tmp_path / "ovae" / "config.json").read_text())["_class_name"] == "OVAEDiffusers"
    e = OVAEDiffusers.from_pretrained(tmp_path / "ovae")
    z = torch.randn(1, 4, 5, 7)
    assert torch.equal(e.decode(z).sample, v.decode(z))
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    assert torch.equal(e.encode(x).latents, v.encode(x))
    for k, p in v.parts().items():
        assert e.to_ovae().parts()[k].config == p.config and e.to_ovae().parts()[k].module.config == p.module.config


def test_decoder_only_and_bad_config():
    from organic_sd.ovae import OVAE

    d = OVAEDiffusers.from_ovae(OVAE(decoder=random_ovae().decoder))
    with pytest.raises(ValueError, match="no encoder"):
        d.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="parts must map"):
        OVAEDiffusers(parts={"unet": {}})


def test_a_diffusers_pipeline_decodes_with_the_ovae(sd_folder):
    v = random_ovae(seed=1)
    pipe = sd_pipe(sd_folder, OVAEDiffusers.from_ovae(v))
    assert pipe.vae_scale_factor == 8

    def run(kind):
        return pipe("a red cat", num_inference_steps=2, height=32, width=48, output_type=kind,
                    generator=torch.Generator().manual_seed(0)).images

    z = run("latent")  # (1, 4, 4, 6): the UNet's latents, before the pipeline's decode step
    img = run("pt")  # the same latents through the pipeline's own decode and postprocessing
    assert z.shape == (1, 4, 4, 6) and img.shape == (1, 3, 32, 48)
    want = (v.decode(z) / 2 + 0.5).clamp(0, 1)  # the O-VAE's own pixels, as the pipeline maps [-1, 1] to [0, 1]
    torch.testing.assert_close(img, want, atol=1e-6, rtol=0)
    assert want.std() > 0.05
