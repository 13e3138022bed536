"""`osd` itself: help texts, --version, progress bars on a terminal, no empty --out folder after an error."""

import pytest

from conftest import FakeTeacher, noise_images
from organic_sd import __version__, cli
from organic_sd.data import precompute


def _help(capsys, *argv):
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_help_shows_defaults_and_whole_sentences(capsys):
    enc = _help(capsys, "train", "encoder")
    assert "search time per tick (one fresh sample) (default: 30.0)" in enc
    assert "--hessian HESSIAN each hidden unit" in enc and "(default: 0)" in enc  # 0 is a default too
    assert "the missing ones grow on them" in enc  # --init's help was cut mid-sentence ("the units grow on")
    assert "--batch 16" not in enc and "(default: None)" not in enc
    assert "frames per teacher call (default: 16)" in _help(capsys, "precompute", "frames")
    assert "O-UNet denoiser" in _help(capsys)  # `train` is not only for O-VAE parts


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"osd (organic-sd) {__version__}"


@pytest.mark.parametrize("tty, flags, want", [(True, [], True), (False, [], False), (True, ["--no-progress"], False),
                                              (False, ["--progress"], True)])
def test_training_shows_progress_on_a_terminal_without_being_asked(monkeypatch, tmp_path, tty, flags, want):
    from organic_sd.ovae import train as train_mod

    seen = {}

    def train(cfg):
        seen["progress"] = cfg.progress
        return {"status": "done"}

    monkeypatch.setattr(train_mod, "train", train)
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: tty)
    assert cli.main(["train", "decoder", "--store", str(tmp_path), "--out", str(tmp_path / "r"), *flags]) == 0
    assert seen["progress"] is want


def test_an_error_leaves_no_empty_out_folder(tmp_path, capsys):
    src = noise_images(tmp_path / "imgs", 3)
    precompute(src, FakeTeacher(), tmp_path / "s", 32, val_fraction=0.0, progress=False)  # no held-out frame
    out = tmp_path / "run"
    assert cli.main(["train", "decoder", "--store", str(tmp_path / "s"), "--out", str(out), "--ticks", "1"]) == 2
    err = capsys.readouterr().err
    assert "no held-out samples" in err and f"osd store resplit {tmp_path / 's'}" in err
    assert not out.exists()  # before: an empty run folder was left behind
    out.mkdir()  # a folder the user made stays, even empty
    assert cli.main(["train", "decoder", "--store", str(tmp_path / "s"), "--out", str(out), "--ticks", "1"]) == 2
    assert out.is_dir()
