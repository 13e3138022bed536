"""bench/staged_reference.py: Adam references at the trainer's exact staged shapes, beside an evolved run."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import quick

from organic_sd.ovae.features import FEATURES_NAME
from organic_sd.ovae.model import read_parts
from organic_sd.ovae.train import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from staged_reference import Net, main  # noqa: E402

STAGES = ("3:4", "3:3:1:1", "1:3:1:1")  # latent -> 1/4 -> 1/2 -> full, the later two reading the latent and the carry


def test_the_adam_net_is_the_ola_module_it_is_copied_into():
    torch.manual_seed(0)
    for hidden in (5, 0):
        net = Net(7, hidden, 4, 1.5)
        x = torch.randn(30, 7)
        m = net.to_module()
        assert m.config.hidden == ((hidden,) if hidden else ())
        assert torch.allclose(m(x), net(x), atol=1e-6)


def test_the_reference_runs_the_trainers_stages_and_scores_the_evolved_run_beside_it(taesd_store, tmp_path):
    store, teacher = taesd_store
    run = tmp_path / "evolved"
    train(quick("decoder", store, run, stages=STAGES, stage_targets="features", teacher=str(teacher),
                feature_channels=3, ticks=1))
    ref = tmp_path / "ref"
    flags = ["--store", str(store), "--out", str(ref), "--stages", *STAGES, "--stage-targets", "features",
             "--teacher", str(teacher), "--feature-channels", "3", "--eval-images", "4", "--max-rows", "2000"]
    # an earlier call into the same folder leaves another basis there (two components: on this tiny store another
    # seed alone can fit the very same one), then the call beside the evolved run
    assert main(["decoder", *flags, "--feature-channels", "2", "--adam-seconds", "0.5"]) == 0
    assert (ref / FEATURES_NAME).read_bytes() != (run / FEATURES_NAME).read_bytes()
    assert main(["decoder", *flags, "--adam-seconds", "2", "--redraw-seconds", "1", "--evolved", str(run)]) == 0
    r = json.loads((ref / "reference.json").read_text())
    # the evolved run's basis, byte for byte: both stacks learn the very same feature targets
    assert (ref / FEATURES_NAME).read_bytes() == (run / FEATURES_NAME).read_bytes()
    assert [s["stage"] for s in r["stages"]] == [1, 2, 3]
    for s in r["stages"][:2]:  # feature stages: relative error, for the reference and the evolved run alike
        assert 0 < s["reference"]["rel_error"] < 1.5 and 0 < s["evolved"]["rel_error"] < 1.5, s
    # the evolved stages, scored through their own frozen stages, give the numbers the trainer logged
    logged = json.loads((run / "stage3" / "state.json").read_text())["best"]
    assert r["stages"][2]["evolved"]["psnr"] == pytest.approx(logged["psnr"], abs=1e-6)
    # the reference is an O-VAE file of the same shapes, loadable as any run
    dec = read_parts(str(ref))["decoder"]
    evo = read_parts(str(run))["decoder"]
    assert [s.config for s in dec.module.stages] == [s.config for s in evo.module.stages]
    assert dec.num_parameters() == evo.num_parameters() == r["parameters"]


def test_an_evolved_run_of_other_shapes_is_refused(taesd_store, tmp_path):
    store, teacher = taesd_store
    run = tmp_path / "evolved"
    train(quick("decoder", store, run, stages=("3:4", "3:3:0", "1:3:0"), ticks=1))
    with pytest.raises(SystemExit, match="its stage 2 is"):
        main(["decoder", "--store", str(store), "--out", str(tmp_path / "ref"), "--stages", *STAGES,
              "--eval-images", "4", "--max-rows", "2000", "--adam-seconds", "0.2", "--evolved", str(run)])


def test_the_encoders_reference_scores_cosine_beside_the_evolved_encoder(taesd_store, tmp_path):
    store, teacher = taesd_store
    run, ref = tmp_path / "enc", tmp_path / "ref"
    stages = ("3:4", "1:3", "3:0")  # pixels -> 1/2 -> 1/4 (features) -> latent, the last stage linear
    train(quick("encoder", store, run, stages=stages, teacher=str(teacher), feature_channels=5, generations=40,
                ticks=1))
    assert main(["encoder", "--store", str(store), "--out", str(ref), "--stages", *stages, "--teacher", str(teacher),
                 "--feature-channels", "5", "--eval-images", "4", "--max-rows", "2000", "--adam-seconds", "1",
                 "--evolved", str(run)]) == 0
    r = json.loads((ref / "reference.json").read_text())
    last = r["stages"][-1]
    assert -1 <= last["reference"]["cosine"] <= 1
    logged = json.loads((run / "stage3" / "state.json").read_text())["best"]  # what the trainer scored, the same
    assert last["evolved"]["cosine"] == pytest.approx(logged["cosine"], abs=1e-6)
    enc = read_parts(str(ref))["encoder"]
    assert enc.config.mode == "staged" and tuple(enc.module.stages[-1].module.config.hidden) == ()
