import json

import numpy as np
import pytest
from PIL import Image

from organic_sd.data import FrameTooSmallError, describe_preprocess, load_image, preprocess


def test_shape_dtype_range():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    x = preprocess(a, 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0


def test_same_size_is_exact_rescale():
    a = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    x = preprocess(a, 32)
    np.testing.assert_allclose(x, a.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)


def test_pil_and_array_agree():
    a = np.random.default_rng(1).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess(a, 40), preprocess(Image.fromarray(a), 40))


def test_centre_crop_keeps_the_middle():
    # wide frame: red | green | blue bands of width 40; the centre square is all green
    a = np.zeros((40, 120, 3), np.uint8)
    a[:, :40, 0] = 255
    a[:, 40:80, 1] = 255
    a[:, 80:, 2] = 255
    x = preprocess(a, 40)
    np.testing.assert_allclose(x[1], 1.0)
    np.testing.assert_allclose(x[[0, 2]], -1.0)
    tall = preprocess(a.transpose(1, 0, 2), 40)
    np.testing.assert_allclose(tall[1], 1.0)


def test_matches_resize_shorter_side_then_crop():
    # the one-pass box resize equals the two-step recipe it documents (even margins)
    a = np.random.default_rng(2).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    im = Image.fromarray(a).resize((80, 48), Image.Resampling.BICUBIC)
    ref = np.asarray(im, np.float32)[:, 16:64].transpose(2, 0, 1) / 127.5 - 1.0
    x = preprocess(a, 48)
    assert np.abs(x - ref).mean() < 0.02


def test_grey_alpha_and_float_inputs():
    g = np.full((40, 40), 200, np.uint8)
    np.testing.assert_allclose(preprocess(g, 32), 200 / 127.5 - 1, atol=1e-6)
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent black -> white
    np.testing.assert_allclose(preprocess(rgba, 32), 1.0)
    f = np.full((40, 40, 3), 0.5, np.float32)
    np.testing.assert_allclose(preprocess(f, 32), 128 / 127.5 - 1, atol=1e-6)


def test_too_small_is_a_clear_error():
    with pytest.raises(FrameTooSmallError, match=r"40x30.*shorter side 30 is below size 32"):
        preprocess(np.zeros((30, 40, 3), np.uint8), 32)


def test_bad_inputs():
    with pytest.raises(ValueError, match="dtype"):
        preprocess(np.zeros((40, 40, 3), np.int32), 32)
    with pytest.raises(ValueError, match="shape|must be"):
        preprocess(np.zeros((40, 40, 2), np.uint8), 32)
    with pytest.raises(ValueError, match="size"):
        preprocess(np.zeros((40, 40, 3), np.uint8), 0)


def test_describe_is_json_and_tracks_size():
    d = describe_preprocess(64)
    assert json.loads(json.dumps(d)) == d
    assert d["size"] == 64 and d["range"] == [-1.0, 1.0]
    assert describe_preprocess(64) == d and describe_preprocess(32) != d


def test_load_image_rgb_and_truncated(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (40, 50), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "g.png")
    im = load_image(tmp_path / "g.png")
    assert im.mode == "RGB" and im.size == (50, 40)
    Image.fromarray(np.dstack([a] * 3)).save(tmp_path / "c.jpg")
    data = (tmp_path / "c.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.jpg: not a readable image"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
