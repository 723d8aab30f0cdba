"""Loss terms: values, shapes, fp32 under autocast."""

from __future__ import annotations

import pytest
import torch

from nstd.engine.losses import content_loss, gram_matrix, style_loss, temporal_loss, tv_loss


def test_gram_normalized_by_channels_and_positions() -> None:
    gram = gram_matrix(torch.ones(2, 4, 3, 5))
    assert gram.shape == (2, 4, 4) and gram.dtype == torch.float32
    torch.testing.assert_close(gram, torch.full((2, 4, 4), 1 / 4))  # (H W) / (C H W)


def test_gram_is_symmetric_and_size_invariant() -> None:
    feats = torch.rand(1, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    gram = gram_matrix(feats)
    torch.testing.assert_close(gram, gram.transpose(1, 2))
    tiled = feats.repeat(1, 1, 2, 2)  # same statistics, four times the positions
    torch.testing.assert_close(gram_matrix(tiled), gram)


def test_gram_is_fp32_under_bf16_autocast() -> None:
    feats = torch.rand(1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(feats.bfloat16())
        loss = content_loss(feats.bfloat16(), feats.bfloat16() * 0)
    assert gram.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(gram, gram_matrix(feats.bfloat16().float()))


def test_content_loss_is_the_mean_squared_difference() -> None:
    a = torch.zeros(1, 2, 2, 2)
    b = torch.zeros(1, 2, 2, 2)
    b[0, 0, 0, 0] = 2.0  # squared difference 4
    b[0, 1, 1, 0] = -1.0  # squared difference 1
    # (4 + 1) over all 8 elements, not summed and not over channels only.
    assert content_loss(a, b).item() == pytest.approx(5 / 8)
    assert content_loss(b, a).item() == pytest.approx(5 / 8)  # symmetric
    assert content_loss(b, b).item() == 0.0
    # Independent of size: the same per-element difference on a map 4x as large.
    assert content_loss(a.repeat(1, 1, 2, 2), b.repeat(1, 1, 2, 2)).item() == pytest.approx(5 / 8)
    # bf16 features still give a float32 loss.
    assert content_loss(a.bfloat16(), b.bfloat16()).dtype == torch.float32


def test_style_loss_weighted_sum_skips_zero_weights() -> None:
    g = {"a": torch.ones(1, 2, 2), "b": torch.zeros(1, 2, 2)}
    t = {"a": torch.zeros(1, 2, 2), "b": torch.ones(1, 2, 2)}
    assert style_loss(g, t, {"a": 2.0, "b": 0.5}).item() == pytest.approx(2.5)
    assert style_loss({"a": g["a"]}, t, {"a": 1.0, "b": 0.0}).item() == pytest.approx(1.0)
    assert style_loss(g, t, {"a": 0.0}).item() == 0.0


def test_tv_loss() -> None:
    assert tv_loss(torch.full((1, 3, 5, 5), 0.3)).item() == 0.0
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 3, 4)  # steps of 1 along x
    assert tv_loss(ramp).item() == pytest.approx(1.0)


def test_temporal_loss_masked_mean() -> None:
    x, target = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # sum(mask * diff^2) = 3 channels * 1 pixel; divided by 3 * H * W = 12
    assert temporal_loss(x, target, mask).item() == pytest.approx(3 / 12)
    assert temporal_loss(x, target, torch.zeros(1, 1, 2, 2)).item() == 0.0
    assert temporal_loss(x, target, torch.ones(1, 1, 2, 2)).item() == pytest.approx(1.0)
