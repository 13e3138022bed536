import pytest
import torch

from organic_sd import cli
from conftest import random_ovae

from organic_sd.ola import OLAConfig, OLAModule
from organic_sd.ovae import OVAE, Part, PartConfig

from organic_sd.ovae.conv import ConvPart


@pytest.mark.parametrize("hidden,pad,dec_window", [((), "replicate", 1), ((5, 3), "replicate", 3),
                                                   ((4,), "reflect", 5)])
def test_conv_form_equals_the_patch_parts(hidden, pad, dec_window):
    v = random_ovae(hidden=hidden, pad=pad, dec_window=dec_window)
    x = torch.rand(2, 3, 48, 72) * 2 - 1
    z = v.encode(x)
    torch.testing.assert_close(ConvPart(v.encoder)(x), z, atol=2e-5, rtol=0)
    assert z.std() > 0.3  # the comparison is not between two flat maps
    zz = torch.randn(2, 4, 6, 9)
    torch.testing.assert_close(ConvPart(v.decoder)(zz), v.decode(zz), atol=2e-5, rtol=0)


def test_conv_form_refuses_global_parts():
    cfg = PartConfig("decoder", mode="global", teacher="fake", latent_channels=4, image_size=32)
    part = Part(cfg, OLAModule(OLAConfig(*cfg.io_dims())))
    with pytest.raises(ValueError, match="only patch-mode parts.*global-mode decoder"):
        ConvPart(part)


@pytest.mark.parametrize("part", ["decoder", "encoder"])
def test_onnx_export_matches_pytorch_at_another_size(tmp_path, part):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import onnx

    from organic_sd.ovae.onnx import check_onnx, export_onnx

    v = random_ovae()
    path = export_onnx(v, tmp_path / f"{part}.onnx", part, size=(64, 64))
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3 if part == "encoder" else 4, "height", "width"]
    allowed = {"Add", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "DepthToSpace", "Mul", "Pad",
               "Reshape", "Slice", "Tanh", "Transpose"}
    assert {n.op_type for n in graph.node} <= allowed
    assert check_onnx(path, v, part, size=(40, 88)) <= 1e-3  # a size it was not exported at


def test_osd_export_onnx_command(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    f = random_ovae().save(tmp_path / "v.safetensors")
    assert cli.main(["export", "--onnx", str(tmp_path / "d.onnx"), "--part", "decoder", "--ovae", str(f)]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "max abs difference" in out and (tmp_path / "d.onnx").is_file()
    assert cli.main(["export", "--out", str(tmp_path / "x.safetensors")]) == 2  # no runs and no --onnx
    assert "--encoder RUN --decoder RUN" in capsys.readouterr().err
    dec_only = OVAE(decoder=random_ovae().decoder).save(tmp_path / "dec.safetensors")
    assert cli.main(["export", "--onnx", str(tmp_path / "e.onnx"), "--part", "encoder", "--ovae", str(dec_only)]) == 2
    assert "has no encoder" in capsys.readouterr().err
