"""Precompute under torchrun (gloo, 2 CPU processes): same store as one process, resumable with any N.

The torchrun workers run this very file as a script (see the bottom), with the fake teacher
of conftest.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, FakeTeacher, noise_images
from launch import torchrun

from organic_sd import cli, dist
from organic_sd.data import Store, StoreWriter, describe_preprocess, precompute

SIZE = 32
KW = dict(batch=2, shard_size=3, val_fraction=0.3)
VIDEO = "sample:carphone"  # 176x144: 4 frames at stride 7 keep the video path in every run
VIDEO_KW = dict(stride=7)
DUPS = 4  # the image folder is listed twice: its 4 frames count as "already stored" once more


def _torchrun(nproc: int, sources: list[str], out: Path, *extra: str, wait: bool = True):
    p = torchrun(nproc, __file__, str(out), *extra, "--", *sources, wait=wait)
    if not wait:
        return p
    return json.loads(p.stdout.strip().splitlines()[-1])


def _contents(path: Path) -> dict:
    """key -> (image, latent, decode, is_val), after checking that no key is stored twice."""
    s = Store.open(path)
    s.verify()
    keys = s.keys
    assert len(keys) == len(set(keys)), "a frame is stored twice"
    assert not list(path.glob("meta.r*.json")) and not list(path.glob("*.tmp"))
    val = set(s.indices("val").tolist())
    rows = np.arange(len(s))
    ims, lats, decs = s.images[rows], s.latents[rows], s.decodes[rows]
    return {k: (ims[i], lats[i], decs[i], i in val) for i, k in enumerate(keys)}


def _assert_same(a: dict, b: dict, held_out_too: frozenset = frozenset()) -> None:
    """Same frames, same numbers, same split; keys in `held_out_too` must be held out in `a` whatever `b` says."""
    assert sorted(a) == sorted(b)
    for k in a:
        for x, y in zip(a[k][:3], b[k][:3]):
            np.testing.assert_array_equal(x, y)
        if k in held_out_too:
            assert a[k][3], f"{k} belongs to a group held out earlier but is in the training split"
        else:
            assert a[k][3] == b[k][3], f"{k} is in another split"


def _forced_keys(path: Path) -> frozenset:
    """Keys of the groups a store forced into its held-out split (split.ensure_held_out), which stay held out for
    good: a store cut short before any group hashed into the held-out split forces one, and a resume keeps it."""
    from organic_sd.data.split import key_groups

    s = Store.open(path)
    forced = set(s.meta.get("held_out_groups", []))
    return frozenset(k for k, g in zip(s.keys, key_groups(s.keys)) if g in forced)


def test_part_files_are_merged_once_even_if_left_behind(tmp_path):
    header = {"teacher": "fake", "size": 8, "preprocess": describe_preprocess(8), "val_fraction": 0.5,
              "dtype": "float16", "shapes": {"images": [3, 8, 8], "latents": [4, 1, 1], "decodes": [3, 8, 8]}}
    rng = np.random.default_rng(0)
    w0 = StoreWriter(tmp_path / "s", header, 2, rank=0)  # rank 0 first: it creates the store and holds the lock
    w1 = StoreWriter(tmp_path / "s", header, 2, rank=1)
    for r, w in enumerate((w0, w1)):
        keys = [f"f#{2 * i + r}" for i in range(3)]  # frame i goes to rank i % 2
        w.add(keys, keys, rng.uniform(-1, 1, (3, 3, 8, 8)), rng.normal(size=(3, 4, 1, 1)),
              rng.uniform(-1, 1, (3, 3, 8, 8)))
        w.commit()
    assert Store.open(tmp_path / "s").meta["count"] == 0  # committed to the part files only
    stale = (tmp_path / "s" / "meta.r001.json").read_text()
    w0.merge(w0.parts + w1.parts)
    w0.release()
    assert sorted(Store.open(tmp_path / "s").keys) == [f"f#{i}" for i in range(6)]
    # a crash right after meta.json was written, before the part files were removed, leaves one behind
    (tmp_path / "s" / "meta.r001.json").write_text(stale)
    StoreWriter(tmp_path / "s", header, 2).close()
    s = Store.open(tmp_path / "s")
    s.verify()
    assert sorted(s.keys) == [f"f#{i}" for i in range(6)] and len(s.meta["shards"]) == 4
    assert not list((tmp_path / "s").glob("meta.r*.json"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Sources (an image folder listed twice, plus a video) and the store one process makes of them."""
    root = tmp_path_factory.mktemp("dist")
    # The split hashes each image's path, and tmp paths change from run to run: pick a folder
    # name whose first images put at least one frame in the held-out split, so the split is tested.
    # The first two already: a store of fewer frames whose hash rule holds none out gets a forced
    # held-out group that stays held out (data/split.py), and the stores below grow from 2 frames.
    from organic_sd.data.sources import iter_frames, open_sources
    from organic_sd.data.store import split_is_val

    for k in range(100):
        folder = noise_images(root / f"imgs{k}", 11)
        first = [fr.group for fr in iter_frames(open_sources([folder], max_frames=2))]
        if any(split_is_val(g, KW["val_fraction"]) for g in first):
            break
    sources = [folder, VIDEO, folder]
    precompute(sources, FakeTeacher(), root / "one", SIZE, max_frames=4, progress=False, **VIDEO_KW, **KW)
    return sources, _contents(root / "one")


def test_two_ranks_give_the_same_store_as_one_process(tmp_path, data):
    sources, one = data
    rep = _torchrun(2, sources, tmp_path / "two", "--max-frames", "4")
    assert (rep["written"], rep["total"]) == (len(one), len(one))
    s = Store.open(tmp_path / "two")
    assert {sh["name"].split("-")[2] for sh in s.meta["shards"]} == {"r000", "r001"}  # each rank wrote shards
    assert s.meta["counts"]["val"] == sum(v[3] for v in one.values()) > 0
    _assert_same(_contents(tmp_path / "two"), one)


def test_two_ranks_then_one_process_loses_and_duplicates_nothing(tmp_path, data):
    sources, one = data
    first = _torchrun(2, sources, tmp_path / "s", "--max-frames", "2")
    rep = precompute(sources, FakeTeacher(), tmp_path / "s", SIZE, max_frames=4, progress=False, **VIDEO_KW, **KW)
    assert first["total"] == 4 and (rep.already, rep.written, rep.total) == (4 + DUPS, len(one) - 4, len(one))
    _assert_same(_contents(tmp_path / "s"), one)


def test_one_process_then_two_ranks_loses_and_duplicates_nothing(tmp_path, data):
    sources, one = data
    precompute(sources, FakeTeacher(), tmp_path / "s", SIZE, max_frames=3, progress=False, **VIDEO_KW, **KW)
    rep = _torchrun(2, sources, tmp_path / "s", "--max-frames", "4")
    assert (rep["already"], rep["written"], rep["total"]) == (6 + DUPS, len(one) - 6, len(one))
    _assert_same(_contents(tmp_path / "s"), one)


def test_killed_two_ranks_then_one_process_keeps_committed_shards(tmp_path, data):
    sources = data[0][:1]  # 11 images: 3 batches per rank, the kill comes while the last one runs
    precompute(sources, FakeTeacher(), tmp_path / "one", SIZE, progress=False, **KW)
    one = _contents(tmp_path / "one")
    p = _torchrun(2, sources, tmp_path / "s", "--delay", "0.5", wait=False)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once both ranks have committed a shard to their part files
        parts = list((tmp_path / "s").glob("meta.r*.json"))
        if len(parts) == 2 and all(json.loads(f.read_text())["shards"] for f in parts):
            break
        time.sleep(0.05)
    # torchrun starts each worker in its own session: kill the workers themselves, giving none a chance to clean up
    workers = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    assert len(workers) == 2
    for w in workers:
        os.kill(int(w), signal.SIGKILL)
    p.communicate(timeout=60)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["count"] == 0  # rank 0 never merged: the shards are only in the part files
    rep = precompute(sources, FakeTeacher(), tmp_path / "s", SIZE, progress=False, **KW)
    assert 6 <= rep.already < len(one) and rep.already + rep.written == len(one) == rep.total
    _assert_same(_contents(tmp_path / "s"), one)


def test_ctrl_c_under_torchrun_commits_every_rank_then_resume_completes(tmp_path, data):
    sources = [noise_images(tmp_path / "imgs", 30)]  # 8 batches per rank: Ctrl-C comes well before the end
    p = _torchrun(2, sources, tmp_path / "s", "--delay", "0.3", wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "s").glob("meta.r*.json")):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)  # torchrun passes it on to every worker, as a terminal's Ctrl-C would
    out, err = p.communicate(timeout=120)
    first = json.loads(out.strip().splitlines()[-1])
    assert first["interrupted"] and 3 <= first["total"] < 30, err[-3000:]
    s = Store.open(tmp_path / "s")
    assert len(s) == first["total"] and not list((tmp_path / "s").glob("meta.r*.json"))
    rep = precompute(sources, FakeTeacher(), tmp_path / "s", SIZE, progress=False, **KW)
    assert (rep.already, rep.total) == (first["total"], 30)
    precompute(sources, FakeTeacher(), tmp_path / "one", SIZE, progress=False, **KW)
    # where Ctrl-C came before any group hashed into the held-out split, the cut store forced one (by design,
    # for good); every other frame must sit in the split of the one-process store
    _assert_same(_contents(tmp_path / "s"), _contents(tmp_path / "one"), _forced_keys(tmp_path / "s"))


def test_torchrun_cli_with_real_taef2_matches_one_process(tmp_path, data):
    taef2 = SHARED / "teachers" / "taef2"
    if not taef2.is_dir():
        pytest.skip(f"no taef2 teacher under {SHARED} (set OSD_SHARED_DATA)")
    sources = [data[0][0]]
    args = ["precompute", "frames", *sources, "--teacher", str(taef2), "--size", "32", "--max-frames", "5",
            "--batch", "2",
            "--shard-size", "2", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "organic_sd.cli", *args, "--out", str(tmp_path / "two")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("wrote 5 new samples") == 1  # only rank 0 prints
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    a, b = _contents(tmp_path / "one"), _contents(tmp_path / "two")
    assert sorted(a) == sorted(b)
    for k in a:
        for x, y in zip(a[k][:3], b[k][:3]):
            np.testing.assert_allclose(x, y, atol=1e-3)  # batches differ across N: allow conv rounding
        assert a[k][3] == b[k][3]


def _worker() -> None:
    """A torchrun worker: precompute with the fake teacher, rank 0 prints the report as JSON."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--delay", type=float, default=0.0)
    args = ap.parse_args()
    assert dist.init() and dist.world_size() > 1
    rep = precompute(args.sources, FakeTeacher(args.delay), args.out, SIZE, max_frames=args.max_frames,
                     progress=False, **VIDEO_KW, **KW)
    if dist.is_main():
        print(json.dumps({"written": rep.written, "already": rep.already, "total": rep.total,
                          "interrupted": rep.interrupted}))
    dist.destroy()


if __name__ == "__main__":
    _worker()
