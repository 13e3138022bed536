import pytest
import torch
import torch.nn.functional as F

from organic_sd.ovae import patches
from organic_sd.ovae.model import Part, PartConfig


class Select(torch.nn.Module):
    """A fixed linear map rows @ M (no tanh): lets a test build a module that copies inputs."""

    def __init__(self, m: torch.Tensor):
        super().__init__()
        self.m = torch.nn.Parameter(m, requires_grad=False)
        self.in_dim, self.out_dim = m.shape

    def forward(self, x):
        return x @ self.m


@pytest.mark.parametrize("H,W", [(16, 16), (24, 40), (8, 8)])
def test_blocks_fold_roundtrip(H, W):
    x = torch.randn(2, 3, H, W)
    rows = patches.blocks(x, 8)  # (2*h*w, 192)
    assert rows.shape == (2 * (H // 8) * (W // 8), 192)
    assert torch.equal(patches.fold_blocks(rows, 2, H // 8, W // 8, 8), x)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_copying_decoder_reproduces_image(k):
    # latents = each cell's own pixel block as channels; a decoder copying the window centre reproduces the image
    f, B, H, W = 4, 2, 12, 20
    x = torch.rand(B, 3, H, W) * 2 - 1
    h, w = H // f, W // f
    C = 3 * f * f
    z = patches.rows_to_grid(patches.blocks(x, f), B, h, w)  # (B, 48, h, w)
    centre = (k * k) // 2
    m = torch.zeros(C * k * k, C)
    m[torch.arange(C) * k * k + centre, torch.arange(C)] = 1.0  # window rows are channel-major
    dec = Part(PartConfig("decoder", latent_channels=C, downscale=f, window=k), Select(m))
    assert torch.equal(dec(z), x)


def test_latent_windows_match_slicing():
    z = torch.randn(2, 5, 4, 6)
    k, r = 3, 1
    rows = patches.latent_windows(z, k)
    zp = F.pad(z, (r, r, r, r), mode="replicate")
    for b, i, j in [(0, 0, 0), (1, 3, 5), (0, 2, 1)]:
        n = (b * 4 + i) * 6 + j
        assert torch.equal(rows[n], zp[b, :, i:i + k, j:j + k].reshape(-1))


@pytest.mark.parametrize("pad", ["replicate", "reflect"])
def test_pixel_windows_match_slicing(pad):
    f, s = 8, 16
    x = torch.randn(2, 3, 24, 32)
    rows = patches.pixel_windows(x, f, s, pad)  # (2*3*4, 768)
    p = (s - f) // 2
    xp = F.pad(x, (p, p, p, p), mode=pad)
    assert rows.shape == (24, 3 * s * s)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (1, 1, 0)]:
        n = (b * 3 + i) * 4 + j
        assert torch.equal(rows[n], xp[b, :, i * f:i * f + s, j * f:j * f + s].reshape(-1))


def test_encoder_window_centred_on_block():
    # with s == f the window is exactly the cell's block
    x = torch.randn(1, 3, 16, 24)
    assert torch.equal(patches.pixel_windows(x, 8, 8), patches.blocks(x, 8))


def test_bad_windows():
    with pytest.raises(ValueError, match="odd"):
        patches.latent_windows(torch.zeros(1, 4, 2, 2), 2)
    with pytest.raises(ValueError, match="even number"):
        patches.pixel_windows(torch.zeros(1, 3, 16, 16), 8, 11)
    with pytest.raises(ValueError, match="multiple"):
        patches.pixel_windows(torch.zeros(1, 3, 12, 16), 8, 16)
    with pytest.raises(ValueError, match="pad"):
        patches.latent_windows(torch.zeros(1, 4, 2, 2), 3, pad="zeros")


def test_retina_is_a_fixed_seeded_projection():
    x = torch.randn(3, 50)
    a = patches.retina(x, 8, seed=1, chunk=16)
    assert torch.equal(a, patches.retina(x, 8, seed=1, chunk=16))
    assert not torch.allclose(a, patches.retina(x, 8, seed=2, chunk=16))
    # it is linear: the same as one explicit matrix assembled from the seeded chunks
    r = torch.cat([torch.randn(8, min(16, 50 - s), generator=torch.Generator().manual_seed(1_000_003 + j))
                   for j, s in enumerate(range(0, 50, 16))], dim=1)
    torch.testing.assert_close(a, x @ r.T / 50 ** 0.5)
