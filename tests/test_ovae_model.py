import json

import pytest
import torch
from safetensors.torch import save_file

import organic_sd
from organic_sd.ola import OLAConfig, OLAModule
from organic_sd.ovae import OVAE, Part, PartConfig, model


def _part(kind, mode="patch", C=4, f=8, hidden=(), **kw):
    cfg = PartConfig(kind, mode=mode, teacher="fake", latent_channels=C, downscale=f, image_size=32, **kw)
    i, o = cfg.io_dims()
    torch.manual_seed(0)
    return Part(cfg, OLAModule(OLAConfig(i, o, hidden, 3.0 if kind == "encoder" else 1.0)))


def _ovae(**kw):
    return OVAE(_part("encoder", **kw), _part("decoder", **kw))


def test_lazy_export():
    assert organic_sd.OVAE is OVAE


@pytest.mark.parametrize("H,W", [(32, 32), (16, 48), (8, 8), (64, 24)])
def test_any_size_patch_mode(H, W):
    v = _ovae(hidden=(3,))
    x = torch.rand(2, 3, H, W) * 2 - 1
    z = v.encode(x)
    assert z.shape == (2, 4, H // 8, W // 8)
    y = v.decode(z)
    assert y.shape == x.shape and float(y.std()) > 0  # the decoder reads its latents
    assert v.num_parameters() == sum(p.num_parameters() for p in v.parts().values())


def test_an_empty_batch_gives_an_empty_result_of_the_right_shape():
    v = _ovae(hidden=(3,))
    z = v.encode(torch.zeros(0, 3, 16, 24))
    assert z.shape == (0, 4, 2, 3) and v.decode(z).shape == (0, 3, 16, 24)
    g = OVAE(_part("encoder", mode="global", retina_dim=16, grid=2), _part("decoder", mode="global", grid=2,
                                                                           global_size=8))
    assert g.encode(torch.zeros(0, 3, 32, 32)).shape == (0, 4, 2, 2)


def test_global_mode_shapes():
    v = OVAE(_part("encoder", mode="global", retina_dim=16, grid=2), _part("decoder", mode="global", grid=2,
                                                                           global_size=8))
    z = v.encode(torch.zeros(3, 3, 32, 32))
    assert z.shape == (3, 4, 2, 2)
    assert v.decode(z).shape == (3, 3, 32, 32)
    assert v.decode(torch.zeros(1, 4, 4, 4)).shape == (1, 3, 32, 32)  # a full teacher latent is pooled
    with pytest.raises(ValueError, match="32x32 images only"):
        v.encode(torch.zeros(1, 3, 64, 64))


def test_save_load_roundtrip(tmp_path):
    v = OVAE(_part("encoder", hidden=(5,), window=16), _part("decoder", window=5), meta={"note": "x"})
    path = v.save(tmp_path / "v.safetensors")
    w = OVAE.load(path)
    x = torch.rand(1, 3, 24, 16) * 2 - 1
    torch.testing.assert_close(w(x), v(x))
    assert w.meta["teacher"] == "fake" and w.meta["note"] == "x"
    assert w.meta["encoder"]["part"]["window"] == 16 and w.meta["decoder"]["ola"]["in_dim"] == 4 * 25
    assert w.num_parameters() == v.num_parameters()
    # a folder gets model.safetensors, and loads from the folder
    v.save(tmp_path / "run")
    assert OVAE.load(tmp_path / "run").num_parameters() == v.num_parameters()


def test_one_part_files(tmp_path):
    OVAE(decoder=_part("decoder")).save(tmp_path / "d.safetensors")
    v = OVAE.load(tmp_path / "d.safetensors")
    assert v.encoder is None and v.decode(torch.zeros(1, 4, 2, 2)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="no encoder"):
        v.encode(torch.zeros(1, 3, 16, 16))


def test_bad_inputs():
    v = _ovae()
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        v.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        v.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match="4 \\(teacher fake\\) channels"):
        v.decode(torch.zeros(1, 32, 2, 2))
    with pytest.raises(ValueError, match="shape \\(B, C, H, W\\)"):
        v.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="torch.Tensor"):
        v.encode([[0.0]])
    with pytest.raises(ValueError, match="on meta but the O-VAE is on cpu"):
        v.encode(torch.zeros(1, 3, 16, 16, device="meta"))
    with pytest.raises(ValueError, match="do not pair"):
        OVAE(_part("encoder", C=4), _part("decoder", C=8))
    with pytest.raises(ValueError, match="odd"):
        PartConfig("decoder", window=4)
    with pytest.raises(ValueError, match="even number"):
        PartConfig("encoder", window=13)


def test_bad_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no O-VAE"):
        OVAE.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        OVAE.load(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something"})
    with pytest.raises(ValueError, match="not an O-VAE"):
        OVAE.load(tmp_path / "other.safetensors")
    m = OLAModule(OLAConfig(3, 2))
    m.save(tmp_path / "ola.safetensors")
    with pytest.raises(ValueError, match="organic_sd.ola.load"):
        OVAE.load(tmp_path / "ola.safetensors")
    # weights that do not match the stored config
    path = _ovae().save(tmp_path / "v.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    t = load_file(str(path))
    t["decoder.readout.weight"] = t["decoder.readout.weight"][:5]
    save_file(t, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="decoder: weights do not match"):
        OVAE.load(tmp_path / "bad.safetensors")
    monkeypatch.setattr(model, "DEFAULT_PATH", tmp_path / "nothing" / "ovae.safetensors")
    with pytest.raises(FileNotFoundError, match="no default O-VAE is shipped"):
        OVAE.load()


def test_default_loads_when_shipped(tmp_path, monkeypatch):
    path = _ovae().save(tmp_path / "assets" / "ovae.safetensors")
    monkeypatch.setattr(model, "DEFAULT_PATH", path)
    assert OVAE.load().num_parameters() == _ovae().num_parameters()
    assert json.loads(json.dumps(OVAE.load().meta))  # meta is JSON-able
