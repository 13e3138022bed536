"""The frozen OLA module: inference, save/load round trip, refusing what is not ours."""

import json

import pytest
import torch
from safetensors.torch import save_file

from organic_sd import ola
from organic_sd.ola.checks import check_input
from organic_sd.ola.module import OLAConfig, OLAModule
from organic_sd.ovae.model import DEFAULT_PATH


def _module(hidden=(3,)):
    m = OLAModule(OLAConfig(4, 2, hidden, out_scale=2.5), {"strategy": "snes"})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def test_forward_is_the_documented_architecture():
    m = _module()
    x = torch.randn(5, 4)
    h = torch.tanh(x @ m.hidden[0].weight.T + m.hidden[0].bias)
    y = 2.5 * torch.tanh(torch.cat([x, h], 1) @ m.readout.weight.T + m.readout.bias)
    assert torch.allclose(m(x), y, atol=1e-6)
    assert m.num_parameters() == 3 * 4 + 3 + 2 * 7 + 2
    assert not m.training and not m(x).requires_grad


@pytest.mark.parametrize("name", ["run/enc", "enc.safetensors"])
def test_save_load_round_trip(tmp_path, name):
    m = _module()
    m.save(tmp_path / name)
    m2 = ola.load(tmp_path / name)
    x = torch.randn(7, 4)
    assert torch.equal(m(x), m2(x))
    assert m2.config == m.config and m2.training_summary == {"strategy": "snes"}
    if name.endswith("enc"):
        assert json.loads((tmp_path / name / "config.json").read_text())["config"]["in_dim"] == 4
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave nothing behind


def test_load_refuses_what_is_not_an_ola_module(tmp_path):
    with pytest.raises(FileNotFoundError):
        ola.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without model.safetensors"):
        ola.load(tmp_path / "empty")
    (tmp_path / "notes.safetensors").write_text("hello")
    with pytest.raises(ValueError, match="not a safetensors file"):
        ola.load(tmp_path / "notes.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no organic_sd OLA config"):
        ola.load(tmp_path / "other.safetensors")
    save_file({"readout.weight": torch.zeros(2, 3)}, str(tmp_path / "bad.safetensors"),
              metadata={"config": json.dumps({"in_dim": 3, "out_dim": 2, "hidden": [], "out_scale": 1.0,
                                             "format": "organic_sd.ola/1"})})
    with pytest.raises(ValueError, match="do not match its config"):
        ola.load(tmp_path / "bad.safetensors")


def test_load_points_an_ovae_file_to_its_own_loader():
    with pytest.raises(ValueError, match="not a bare OLA module: load it with organic_sd.OVAE.load"):
        ola.load(DEFAULT_PATH)  # the shipped O-VAE wraps two OLA modules


def test_wrong_input_dim_and_device_are_clear_errors():
    m = _module()
    with pytest.raises(ValueError, match=r"inputs of shape \(\.\.\., 4\), got shape \(5, 3\)"):
        m(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="input is on cpu but the module is on cuda"):
        check_input(torch.zeros(5, 4), 4, torch.device("cuda"))


def test_osd_info_describes_a_module_and_refuses_other_files(tmp_path, capsys):
    from organic_sd.cli import main

    _module().save(tmp_path / "m")
    assert main(["info", str(tmp_path / "m")]) == 0
    assert "OLA module 4 -> 3 -> 2" in capsys.readouterr().out
    (tmp_path / "x.safetensors").write_text("junk")
    assert main(["info", str(tmp_path / "x.safetensors")]) == 2
    assert "not a safetensors file" in capsys.readouterr().err


def test_osd_info_describes_the_shipped_o_unet_and_o_vae(capsys):
    from organic_sd.cli import main
    from organic_sd.ounet.model import DEFAULT_PATH as OUNET
    from organic_sd.ovae.model import DEFAULT_PATH as OVAE

    assert main(["info", str(OUNET)]) == 0
    assert capsys.readouterr().out.startswith("O-UNet, ")
    assert main(["info", str(OVAE)]) == 0
    assert capsys.readouterr().out.startswith("O-VAE, ")


def test_osd_info_is_a_short_summary_and_json_gives_everything(capsys):
    """Issue 25 item 6: `osd info` printed 1,100-1,700 lines of JSON with every training curve and the
    training machine's folder paths; now a short summary, and --json for everything."""
    import json

    from organic_sd.cli import main
    from organic_sd.ounet.model import DEFAULT_PATH as OUNET
    from organic_sd.ovae.model import DEFAULT_PATH as OVAE

    for path, first, needed in ((OVAE, "O-VAE, ", ("encoder", "decoder", "latents (B, 32", "trained: snes", "psnr")),
                                (OUNET, "O-UNet, ", ("samples (1, 28, 28)", "trained: snes", "heldout_mse",
                                                     "(the kept tick's fit: tick "))):
        assert main(["info", str(path)]) == 0
        out = capsys.readouterr().out
        assert out.startswith(first) and "cloning " in out and "parameters" in out
        assert len(out.splitlines()) <= 16, out  # a staged pair: a line per stage, and the decoder's global shift
        assert "curve" not in out and "/tmp/" not in out and "{" not in out, out
        for s in needed:
            assert s in out, (s, out)
        assert main(["info", "--json", str(path)]) == 0
        out = capsys.readouterr().out
        assert out.startswith(first) and '"curve"' in out
        json.loads(out.split("\n", 1)[1])  # everything, as JSON after the first line
