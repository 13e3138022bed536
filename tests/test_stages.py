import pytest
import torch

from organic_sd import stages
from organic_sd.ola.module import OLAConfig, OLAModule
from organic_sd.stages import Stack, Stage, StageConfig


def _stage(cfg: StageConfig, hidden=(5, 3), seed=0) -> Stage:
    """A stage with random weights (big enough that tanh bends): what the fast path must reproduce."""
    i, o = cfg.io_dims()
    m = OLAModule(OLAConfig(i, o, hidden, out_scale=1.5))
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.data = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
    return Stage(cfg, m)


def _stack(C=4, hidden=(5, 3)) -> Stack:
    return Stack([_stage(StageConfig(C, 3, window=3, up=2), hidden, 0),
                  _stage(StageConfig(3, 3, window=3, up=2, extra_channels=C, extra_window=1), hidden, 1),
                  _stage(StageConfig(3, 3, window=5, up=2, extra_channels=C, extra_window=3, pad="reflect"), (), 2)])


def test_shapes_and_rows():
    cfg = StageConfig(4, 3, window=3, up=2, extra_channels=2, extra_window=1)
    assert cfg.io_dims() == (4 * 9 + 2, 12)
    s = _stage(cfg)
    x, e = torch.randn(2, 4, 5, 7), torch.randn(2, 2, 5, 7)
    assert s.rows(x, e).shape == (2 * 5 * 7, 38)
    assert s(x, e).shape == (2, 3, 10, 14)
    st = _stack()
    z = torch.randn(2, 4, 3, 5)
    assert [m.shape for m in st.outputs(z)] == [(2, 3, 6, 10), (2, 3, 12, 20), (2, 3, 24, 40)]
    assert st.up == 8 and st(z).shape == (2, 3, 24, 40)


def test_rows_are_windows_in_unfold_order():
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    rows = stages.windows(x, 3)  # (9, 18): centre row is position (1, 1), whose window is the whole map
    assert torch.equal(rows[4], x.flatten())
    blocks = torch.randn(2, 3, 8, 6)
    assert torch.equal(stages.from_blocks(stages.to_blocks(blocks, 2), 2, 4, 3, 2), blocks)


def test_fast_path_equals_row_path():
    st = _stack().double()
    z = torch.randn(2, 4, 4, 6, dtype=torch.float64)
    for fast, ref in zip(st.outputs(z, fast=True), st.outputs(z, fast=False)):
        assert torch.allclose(fast, ref, atol=1e-10), float((fast - ref).abs().max())
    assert st(z).is_contiguous()  # the convolutions run channels-last; the stack hands back the usual layout
    # and the row path is the module applied to each window (not two paths sharing one mistake)
    s = st.stages[1]
    x, e = st.outputs(z)[0], stages.repeat_up(z, (8, 12))
    y = s.row_forward(x, e)
    i, j = 3, 5  # position (3, 5) of stage 2's input writes output pixels (6..7, 10..11)
    win = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")[0, :, i:i + 3, j:j + 3].flatten()
    out = s.module(torch.cat([win, e[0, :, i, j]]))  # (3*2*2,) in (c, a, b) order
    assert torch.allclose(y[0, :, 6:8, 10:12].flatten(), out, atol=1e-10)


def test_the_fast_paths_tanh_and_repeated_add_work_in_place_and_match_the_plain_ops():
    z = torch.cat([torch.randn(5000) * 3, torch.tensor([-80.0, -1e-4, 0.0, 1e-4, 80.0])])
    buf = z.clone()
    out = stages.tanh_(buf)
    assert out.data_ptr() == buf.data_ptr() and torch.allclose(out, torch.tanh(z), rtol=0, atol=1e-6)
    assert out[-1] == 1.0 and out[-5] == -1.0  # saturates exactly
    for layout in (torch.contiguous_format, torch.channels_last):  # the fast path's maps are channels-last
        for size in ((8, 12), (2, 3), (8, 1), (1, 1)):  # repeated 1x1, 4x4, 1x12 and 8x12 times
            y = torch.randn(2, 3, 8, 12).contiguous(memory_format=layout)
            part = torch.randn(2, 3, *size).contiguous(memory_format=layout)
            want = y + stages.repeat_up(part, (8, 12))
            got = stages.add_repeated_(y, part)
            assert got.data_ptr() == y.data_ptr() and torch.equal(got, want)


def test_save_load_round_trip(tmp_path):
    st = _stack()
    st.stages[0].module.training_summary = {"seconds": 1.5}
    path = st.save(tmp_path / "stack")
    back = stages.load(path)
    z = torch.randn(1, 4, 3, 3)
    assert torch.equal(back(z), st(z))
    assert back.describe() == st.describe() and back.stages[2].config.pad == "reflect"
    with pytest.raises(ValueError, match="not a stage stack"):
        st.stages[0].module.save(tmp_path / "m.safetensors")
        stages.load(tmp_path / "m.safetensors")


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="windows must be odd"):
        StageConfig(4, 3, window=2)
    with pytest.raises(ValueError, match="needs a module 36 -> 12"):
        Stage(StageConfig(4, 3), OLAModule(OLAConfig(35, 12)))
    a, b = _stage(StageConfig(4, 3)), _stage(StageConfig(5, 3))
    with pytest.raises(ValueError, match="stage 2 reads 5 channels but stage 1 writes 3"):
        Stack([a, b])
    with pytest.raises(ValueError, match=r"extra must have shape \(1, 2, 3, 3\)"):
        _stage(StageConfig(4, 3, extra_channels=2))(torch.randn(1, 4, 3, 3))


def _carry_stack(C=4) -> Stack:
    """Stage 2 carries stage 1's 5 + 3 hidden units (3x3 window), stage 3 stage 2's 4 (1x1)."""
    return Stack([_stage(StageConfig(C, 3, window=3, up=2), (5, 3), 0),
                  _stage(StageConfig(3, 3, window=3, up=2, extra_channels=C, carry_channels=8, carry_window=3), (4,), 1),
                  _stage(StageConfig(3, 3, window=3, up=2, carry_channels=4), (), 2)])


def test_a_carried_stage_reads_the_previous_stages_hidden_units():
    st = _carry_stack().double()
    z = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    for fast, ref in zip(st.outputs(z, fast=True), st.outputs(z, fast=False)):
        assert torch.allclose(fast, ref, atol=1e-10), float((fast - ref).abs().max())
    # the carry is stage 1's hidden units at each of its positions, repeated over the 2x2 block it wrote
    s1, s2 = st.stages[0], st.stages[1]
    x1, h1 = s1.fast(z, with_hidden=True)  # (2, 3, 6, 10), (2, 8, 3, 5)
    i, j = 1, 2
    win = torch.nn.functional.pad(z, (1, 1, 1, 1), mode="replicate")[0, :, i:i + 3, j:j + 3].flatten()
    assert torch.allclose(h1[0, :, i, j], s1.module.features(win)[s1.module.in_dim:], atol=1e-10)
    carry = stages.repeat_up(h1, x1.shape[-2:])
    assert torch.equal(carry[0, :, 2 * i + 1, 2 * j], h1[0, :, i, j])
    y = s2.row_forward(x1, stages.repeat_up(z, x1.shape[-2:]), carry)
    assert torch.allclose(y, st.outputs(z)[1], atol=1e-10)
    # the carry changes what the stage writes (it is read, not ignored)
    assert not torch.allclose(s2.row_forward(x1, stages.repeat_up(z, x1.shape[-2:]), 0 * carry), y)
    _, last = st.run(z)
    assert last.shape == (2, 0, 12, 20)  # stage 3 has no hidden units: nothing to carry on


def test_a_coarse_extra_or_carry_map_is_the_same_as_the_map_repeated_up():
    # the stack hands extra and carry maps over at their own resolution; a 1x1 window is convolved there and its
    # result repeated up (the fast path's saving), a wider one reads the repeated map: both must equal the
    # stage given the repeated map, on both paths
    st = _carry_stack().double()
    z = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    x1, h1 = st.stages[0].fast(z, with_hidden=True)  # (2, 3, 6, 10), (2, 8, 3, 5)
    x2, h2 = st.stages[1].fast(x1, z, h1, with_hidden=True)  # carry window 3, extra window 1, both coarse
    up = lambda m, x: stages.repeat_up(m, x.shape[-2:])  # noqa: E731
    for s, x, extra, carry in ((st.stages[1], x1, z, h1), (st.stages[2], x2, None, h2)):
        full = (None if extra is None else up(extra, x), up(carry, x))
        want = s.row_forward(x, *full)
        for path in (s.fast, s.row_forward):
            assert torch.allclose(path(x, extra, carry), want, atol=1e-10)
        assert torch.allclose(s.fast(x, *full), want, atol=1e-10)
    with pytest.raises(ValueError, match="or a map those sides are whole multiples of"):
        st.stages[2](x2, None, torch.randn(2, 4, 5, 5, dtype=torch.float64))  # 12x20 is no multiple of 5x5


def test_carry_round_trip_and_mismatches(tmp_path):
    st = _carry_stack()
    back = stages.load(st.save(tmp_path / "carry"))
    z = torch.randn(1, 4, 3, 3)
    assert torch.equal(back(z), st(z)) and back.stages[1].config.carry_window == 3
    a = _stage(StageConfig(4, 3, window=3, up=2), (5,), 0)
    with pytest.raises(ValueError, match="carry is the previous stage's hidden units \\(5\\), got carry_channels 4"):
        Stack([a, _stage(StageConfig(3, 3, carry_channels=4), ())])
    with pytest.raises(ValueError, match="carry is the previous stage's hidden units \\(0\\)"):
        Stack([_stage(StageConfig(4, 3, carry_channels=2), ())])
    with pytest.raises(ValueError, match=r"carry must have shape \(1, 5, 3, 3\)"):
        _stage(StageConfig(3, 3, carry_channels=5), ())(torch.randn(1, 3, 3, 3))
    with pytest.raises(ValueError, match="takes no carry map"):
        a(torch.randn(1, 4, 3, 3), None, torch.randn(1, 5, 3, 3))


def _down_stack(hidden=(5, 3)) -> Stack:
    """Fine to coarse, as the staged O-Encoder: RGB -> 6 channels at 1/2 -> 4 at 1/4 (the second stage linear)."""
    return Stack([_stage(StageConfig(3, 6, window=3, up=1, down=2), hidden, 3),
                  _stage(StageConfig(6, 4, window=1, up=1, down=2, pad="reflect"), (), 4)])


def test_a_down_stage_reads_its_map_in_cells_fine_to_coarse():
    cfg = StageConfig(3, 6, window=3, up=1, down=2)
    assert cfg.io_dims() == (3 * 4 * 9, 6)
    st = _down_stack().double()
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    assert [m.shape for m in st.outputs(x)] == [(2, 6, 4, 6), (2, 4, 2, 3)]
    assert st.down == 4 and st.up == 1
    for fast, ref in zip(st.outputs(x, fast=True), st.outputs(x, fast=False)):
        assert torch.allclose(fast, ref, atol=1e-10), float((fast - ref).abs().max())
    # position (1, 2) of stage 1 is the 3x3 window of 2x2 cells around pixels (2..3, 4..5): the module on it
    s = st.stages[0]
    cells = torch.nn.functional.pixel_unshuffle(x, 2)  # (2, 12, 4, 6)
    win = torch.nn.functional.pad(cells, (1, 1, 1, 1), mode="replicate")[0, :, 1:4, 2:5].flatten()
    assert torch.allclose(s.row_forward(x)[0, :, 1, 2], s.module(win), atol=1e-10)
    _, hidden = st.run(x)
    assert hidden.shape == (2, 0, 2, 3)  # the linear last stage has no hidden units, at its positions


def test_down_stage_round_trip_and_refusals(tmp_path):
    st = _down_stack()
    x = torch.randn(1, 3, 16, 8)
    back = stages.load(st.save(tmp_path / "enc"))
    assert [s.config for s in back.stages] == [s.config for s in st.stages]
    assert torch.allclose(back(x), st(x), atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 2"):
        st(torch.randn(1, 3, 6, 5))
    with pytest.raises(ValueError, match="up must be 1"):
        StageConfig(3, 6, up=2, down=2)
    with pytest.raises(ValueError, match="extra or carry"):
        StageConfig(3, 6, up=1, down=2, extra_channels=3)
    with pytest.raises(ValueError, match="down must be >= 1"):
        StageConfig(3, 6, down=0)


def test_a_stack_with_a_global_shift_round_trips_and_both_paths_agree(tmp_path):
    from test_global_shift import random_shift

    plain = _stack()
    st = Stack(list(plain.stages), random_shift(C=4, O=3, maps=2))
    z = torch.randn(3, 4, 3, 5)
    y = st(z)
    assert torch.allclose(y, st.outputs(z, fast=False)[-1], atol=1e-5)  # the row path shifts too
    d = y - plain(z)
    assert d.abs().max() > 1e-3 and torch.allclose(d, d[:, :, :1, :1].expand_as(d), atol=1e-5)
    assert st.num_parameters() == plain.num_parameters() + st.shift.num_parameters()
    back = stages.load(st.save(tmp_path / "shifted"))
    assert torch.equal(back(z), y) and back.shift.describe() == st.shift.describe()
    with pytest.raises(ValueError, match="the global shift reads 5 input"):
        Stack(list(plain.stages), random_shift(C=5, O=3))
    with pytest.raises(ValueError, match="tensors of no stage"):  # shift weights without its description
        Stack.from_description(st.describe(), st.state_dict(), "f")
