import errno
import json

import numpy as np
import pytest

from organic_sd.data import DiskFullError, Store, StoreError, StoreWriter, describe_preprocess
from organic_sd.data import store_writer as store_mod
from organic_sd.data.store import split_is_val

SIZE, C, h = 16, 4, 2


def _header(**over):
    hdr = {
        "teacher": "fake",
        "size": SIZE,
        "preprocess": describe_preprocess(SIZE),
        "shapes": {"images": [3, SIZE, SIZE], "latents": [C, h, h], "decodes": [3, SIZE, SIZE]},
        "val_fraction": 0.3,
        "dtype": "float16",
    }
    hdr.update(over)
    return hdr


def _batch(start, n):
    rng = np.random.default_rng(start)
    keys = [f"src#{i}" for i in range(start, start + n)]
    imgs = rng.uniform(-1, 1, (n, 3, SIZE, SIZE)).astype(np.float32)
    lats = rng.normal(0, 2, (n, C, h, h)).astype(np.float32)
    decs = rng.uniform(-1, 1, (n, 3, SIZE, SIZE)).astype(np.float32)
    return keys, imgs, lats, decs


def _write(path, n, shard_size=4, start=0):
    w = StoreWriter(path, _header(), shard_size)
    keys, imgs, lats, decs = _batch(start, n)
    w.add(keys, keys, imgs, lats, decs)
    w.close()
    return imgs, lats, decs


def test_roundtrip_shards_and_indexing(tmp_path):
    imgs, lats, decs = _write(tmp_path / "s", 10, shard_size=4)
    s = Store.open(tmp_path / "s")
    assert len(s) == 10 and [sh["count"] for sh in s.meta["shards"]] == [4, 4, 2]
    assert s.images.shape == (10, 3, SIZE, SIZE) and s.latents.shape == (10, C, h, h)
    f16 = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731
    np.testing.assert_array_equal(s.images[0], f16(imgs[0]))
    np.testing.assert_array_equal(s.latents[-1], f16(lats[9]))
    idx = np.array([9, 0, 5, 5, 3])  # across shards, unsorted, repeated: order is kept
    np.testing.assert_array_equal(s.decodes[idx], f16(decs[idx]))
    np.testing.assert_array_equal(s.images[2:7], f16(imgs[2:7]))
    assert s.images[0].dtype == np.float32
    with pytest.raises(IndexError):
        s.images[10]
    assert s.keys == [f"src#{i}" for i in range(10)]
    s.verify()


def test_split_fixed_at_write_time(tmp_path):
    _write(tmp_path / "s", 40)
    s = Store.open(tmp_path / "s")
    tr, va = s.indices("train"), s.indices("val")
    assert len(va) > 0 and len(tr) > 0
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(40))
    assert va.tolist() == [i for i in range(40) if split_is_val(f"src#{i}", 0.3)]
    assert s.meta["counts"] == {"train": len(tr), "val": len(va)}
    with pytest.raises(ValueError, match="split"):
        s.indices("test")


def test_append_resumes_and_refuses_other_settings(tmp_path):
    _write(tmp_path / "s", 6)
    w = StoreWriter(tmp_path / "s", _header(), 4)
    assert w.done == {f"src#{i}" for i in range(6)}
    w.close()
    for field, value in [("teacher", "other"), ("size", 32), ("val_fraction", 0.1),
                         ("preprocess", dict(describe_preprocess(SIZE), version=99))]:
        with pytest.raises(StoreError, match=f"cannot append.*{field}"):
            StoreWriter(tmp_path / "s", _header(**{field: value}), 4)
    assert len(Store.open(tmp_path / "s")) == 6


def test_uncommitted_shard_is_dropped_on_reopen(tmp_path):
    _write(tmp_path / "s", 4, shard_size=4)
    w = StoreWriter(tmp_path / "s", _header(), 4)
    keys, imgs, lats, decs = _batch(100, 3)
    w.add(keys, keys, imgs, lats, decs)  # open shard, never committed: as if the process died here
    w.release()
    assert list((tmp_path / "s").glob("*.tmp"))
    s = Store.open(tmp_path / "s")
    assert len(s) == 4
    w2 = StoreWriter(tmp_path / "s", _header(), 4)
    assert not list((tmp_path / "s").glob("*.tmp")) and len(w2.done) == 4
    w2.close()


def test_disk_full_keeps_committed_shards(tmp_path, monkeypatch):
    imgs, _, _ = _write(tmp_path / "s", 8, shard_size=4)
    calls = {"n": 0}

    def full(f, data):
        calls["n"] += 1
        if calls["n"] > 4:  # 3 writes fill shard 2 (committed), the 5th hits the "full" disk
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    monkeypatch.setattr(store_mod, "_write_bytes", full)
    w = StoreWriter(tmp_path / "s", _header(), 4)
    keys, im, la, de = _batch(50, 6)
    with pytest.raises(DiskFullError, match="disk full.*12 samples in 3 committed shards.*intact"):
        w.add(keys, keys, im, la, de)
    w.release()
    s = Store.open(tmp_path / "s")
    assert len(s) == 12 and not list((tmp_path / "s").glob("*.tmp"))
    s.verify()
    np.testing.assert_array_equal(s.images[7], imgs[7].astype(np.float16).astype(np.float32))


def test_meta_write_failure_keeps_previous_meta(tmp_path, monkeypatch):
    _write(tmp_path / "s", 4, shard_size=4)

    def boom(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    w = StoreWriter(tmp_path / "s", _header(), 4)
    monkeypatch.setattr(store_mod, "atomic_json", boom)
    keys, im, la, de = _batch(10, 4)
    with pytest.raises(DiskFullError):
        w.add(keys, keys, im, la, de)
    w.release()
    assert len(Store.open(tmp_path / "s")) == 4


def test_verify_finds_corruption(tmp_path):
    _write(tmp_path / "s", 8, shard_size=4)
    f = tmp_path / "s" / "shard-00001.latents.f16"
    raw = bytearray(f.read_bytes())
    raw[3] ^= 0xFF
    f.write_bytes(bytes(raw))
    (tmp_path / "s" / "shard-00000.images.f16").unlink()
    with pytest.raises(StoreError, match=r"shard-00000.images.f16: missing.*shard-00001.latents.f16: sha256"):
        Store.open(tmp_path / "s").verify()


def test_reading_is_lazy(tmp_path):
    # open reads only meta.json; a shard file is touched when its rows are asked for
    _write(tmp_path / "s", 8, shard_size=4)
    (tmp_path / "s" / "shard-00001.images.f16").unlink()
    s = Store.open(tmp_path / "s")
    assert len(s) == 8 and s.images[0].shape == (3, SIZE, SIZE)
    with pytest.raises(FileNotFoundError):
        s.images[5]


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no store"):
        Store.open(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(StoreError, match="not an organic_sd store"):
        Store.open(tmp_path / "bad")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        StoreWriter(tmp_path / "busy", _header())


def test_one_writer_at_a_time(tmp_path):
    w = StoreWriter(tmp_path / "s", _header(), 4)
    with pytest.raises(StoreError, match="another process"):
        StoreWriter(tmp_path / "s", _header(), 4)
    w.close()


def test_add_checks_shapes(tmp_path):
    w = StoreWriter(tmp_path / "s", _header(), 4)
    keys, imgs, lats, decs = _batch(0, 2)
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 4, 2, 2\)"):
        w.add(keys, keys, imgs, lats[:, :3], decs)
    w.close()
