import json

import numpy as np
import pytest

from conftest import FakeTeacher, noise_images
from organic_sd import cli
from organic_sd.data import Store, StoreError, precompute
from organic_sd.data.split import forced_groups, key_groups, resplit


def test_a_small_store_always_holds_one_frame_out_and_says_its_split(tmp_path):
    src = noise_images(tmp_path / "imgs", 12)
    # so small a share that the hash rule holds out nothing: before, 0 held-out samples and no word of it
    rep = precompute(src, FakeTeacher(), tmp_path / "s", 32, val_fraction=1e-6, n_views=2, progress=False)
    s = Store.open(tmp_path / "s")
    val = s.indices("val")
    assert len(val) == 2 and s.meta["counts"] == {"train": 22, "val": 2}  # one photo, both of its views
    assert len({s.keys[i].split("@")[0] for i in val}) == 1
    assert "split: 22 training samples, 2 held out (1 of 12 photos or video chunks" in rep.summary()
    noise_images(tmp_path / "imgs", 14)  # two more photos appended: the forced photo stays held out
    precompute(src, FakeTeacher(), tmp_path / "s", 32, val_fraction=1e-6, n_views=2, progress=False)
    s2 = Store.open(tmp_path / "s")
    assert [s2.keys[i] for i in s2.indices("val")] == [s.keys[i] for i in val]


def test_resplit_redraws_the_split_without_the_teacher(tmp_path, capsys):
    src = noise_images(tmp_path / "imgs", 10)
    precompute(src, FakeTeacher(), tmp_path / "s", 32, val_fraction=0.0, progress=False)
    before = Store.open(tmp_path / "s")
    assert len(before.indices("val")) == 0
    images = before.images[np.arange(10)]
    assert cli.main(["store", "resplit", str(tmp_path / "s"), "--val-fraction", "0.3"]) == 0
    assert "held out" in capsys.readouterr().out
    after = Store.open(tmp_path / "s")
    assert len(after.indices("val")) >= 1 and after.meta["val_fraction"] == 0.3
    np.testing.assert_array_equal(after.images[np.arange(10)], images)  # the samples are untouched
    after.verify()
    with pytest.raises(ValueError, match="val_fraction"):
        resplit(tmp_path / "s", 1.5)
    with pytest.raises(StoreError, match="holds no store"):
        resplit(tmp_path / "imgs", 0.1)


def test_key_groups_split_videos_by_chunk_and_photos_whole():
    keys = ["/x/p/a.png#0", "/x/p/a.png#0@view1", "clip.mp4#0", "clip.mp4#31", "/y/clip.mp4#32"]
    assert key_groups(keys) == ["p/a.png", "p/a.png", "clip.mp4#0", "clip.mp4#0", "y/clip.mp4#1"]
    with pytest.raises(StoreError, match="not a frame key"):
        key_groups(["sample-17"])
    assert forced_groups(["a"], 0.5) == []  # one group: it must stay for training
    assert forced_groups(["a", "b", "c"], 0.0) == []  # 0 asks for no held-out set
    assert len(forced_groups([str(i) for i in range(40)], 1e-9)) == 1


def test_an_append_keeps_the_forced_group_and_forces_no_other(monkeypatch):
    from organic_sd.data import split

    meta = {"shards": [{"name": "s0", "count": 2, "keys": ["/p/a.png#0", "/p/b.png#0"], "val": []}],
            "val_fraction": 1e-9, "count": 2, "counts": {"train": 2, "val": 0}}
    first = split.ensure_held_out(meta)
    assert len(first["held_out_groups"]) == 1 and first["counts"] == {"train": 1, "val": 1}
    # photos appended later hash lower than the forced one: before, one of them was forced too
    monkeypatch.setattr(split, "_hash", lambda g: 0 if "new" in g else 1)
    keys = [f"/p/new{i}.png#0" for i in range(3)]
    grown = {**first, "shards": first["shards"] + [{"name": "s1", "count": 3, "keys": keys, "val": []}], "count": 5,
             "counts": {"train": 4, "val": 1}}
    assert split.ensure_held_out(grown)["held_out_groups"] == first["held_out_groups"]
