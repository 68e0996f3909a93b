"""PSNR and KL against numpy references."""

import numpy as np
import pytest
import torch

from model.metrics import copy_last_psnr, kl_divergence, psnr


def np_psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return 10 * np.log10(1.0 / mse)


def test_psnr_is_per_sample_not_batch_averaged():
    rng = np.random.default_rng(0)
    a = rng.random((3, 3, 8, 16)).astype(np.float32)
    b = a + rng.normal(0, [[[[0.01]]], [[[0.1]]], [[[0.3]]]], a.shape).astype(np.float32)
    got = psnr(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = np.array([np_psnr(a[i], b[i]) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # averaging the MSE over the batch first would give a different (lower) number
    assert got.mean() > np_psnr(a, b) + 1.0


def test_psnr_perfect_prediction_is_capped():
    x = torch.rand(2, 3, 4, 4)
    assert torch.all(psnr(x, x) == 100.0)


def test_copy_last_baseline_matches_numpy():
    rng = np.random.default_rng(1)
    v = rng.integers(0, 256, (2, 5, 3, 4, 8), dtype=np.uint8)
    x = v.astype(np.float64) / 255
    want = np.mean([np.mean([np_psnr(x[i, t], x[i, t - 1]) for t in range(1, 5)]) for i in range(2)])
    assert copy_last_psnr(torch.from_numpy(v)) == pytest.approx(want, rel=1e-5)


def test_kl_matches_closed_form():
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[0.0, np.log(2.0)]], dtype=torch.float32)
    want = -0.5 * ((1 + 0 - 0.25 - 1) + (1 + np.log(2.0) - 1 - 2)) / 2
    assert kl_divergence(mu, logvar, batch_size=2).item() == pytest.approx(want, rel=1e-6)
    assert kl_divergence(torch.zeros(4, 3), torch.zeros(4, 3), 4).item() == 0.0
