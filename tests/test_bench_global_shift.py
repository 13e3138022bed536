import json
import sys
from pathlib import Path

import torch
from conftest import make_store, quick

from organic_sd.ovae import OVAE
from organic_sd.ovae.train import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from global_shift import main  # noqa: E402


def test_a_colour_cast_is_found_and_removed_from_global_statistics(tmp_path, capsys):
    store = make_store(tmp_path)
    train(quick("decoder", store, tmp_path / "dec", ticks=1))
    train(quick("encoder", store, tmp_path / "enc", ticks=1))
    v = OVAE.load(tmp_path / "dec")
    m, f = v.decoder.module, v.decoder.config.downscale
    with torch.no_grad():
        m.readout.bias[:f * f] += 0.6  # every block's red values: the whole picture turns red
    cast = v.save(tmp_path / "cast.safetensors")
    out = tmp_path / "shift.json"
    assert main(["--store", str(store), "--ovae", str(cast), "--encoder", str(tmp_path / "enc"), "--hidden", "0",
                 "--seconds", "2", "--json", str(out)]) == 0
    rows = {(r["fitted_on"], r["map"]): r["psnr"] for r in json.loads(out.read_text())["rows"]}
    as_is, oracle = rows[("-", "as is")], rows[("-", "oracle")]
    for k in ("teacher", "full"):
        assert oracle[k] > as_is[k] + 1.0  # the cast is a large share of the error
        for fit in ("ridge", "ola-0"):  # a map fitted on the training views takes most of it away on held-out ones
            assert rows[(k, fit)][k] - as_is[k] > 0.5 * (oracle[k] - as_is[k]), (k, fit, rows)
    assert ("both", "ola-0") in rows and "full O-VAE vs the original" in capsys.readouterr().out
