import pytest
import torch

from organic_sd import cli
from organic_sd.devices import resolve_device


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")


def test_devices_this_machine_lacks_are_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device='cuda' was requested but CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device='cuda:2' was requested but only 2 CUDA device\(s\) are visible"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device='gpu0' is not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match=r"device='meta' is not supported"):
        resolve_device("meta")


def test_every_command_checks_its_device_first(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = str(tmp_path / "missing.png")  # the device error comes before the file is looked at
    for argv in (["reconstruct", missing, "--device", "cuda"], ["generate", "--out", missing, "--device", "cuda:0"]):
        assert cli.main(argv) == 2
        assert "CUDA is not available" in capsys.readouterr().err
