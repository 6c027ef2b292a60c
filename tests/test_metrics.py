"""World-model metrics (SPEC §7): PSNR / SSIM against independent formulas, LPIPS and I3D
through the standard weight-file layouts with randomly initialized networks, FVD algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from worldvla.errors import DataError
from worldvla.eval.metrics import fvd as fvd_mod
from worldvla.eval.metrics import i3d as i3d_mod
from worldvla.eval.metrics import lpips as lpips_mod
from worldvla.eval.metrics.fvd import (
    frechet_distance,
    fvd_from_features,
    gaussian_stats,
    preprocess,
    video_features,
)
from worldvla.eval.metrics.i3d import InceptionI3d, _same_pads, export_i3d_torchscript, load_i3d
from worldvla.eval.metrics.image import PSNR_CAP_DB, psnr, ssim
from worldvla.eval.metrics.lpips import LPIPS, load_lpips, lpips_distance, save_lpips_weights, video_lpips

I3D_RES = 64  # tests run the I3D at 64x64 (the pretrained one needs 224) to stay fast on CPU


def _videos(rng: np.random.Generator, n: int, t: int, size: int) -> np.ndarray:
    """Smooth random uint8 videos ``(n, t, size, size, 3)``: blurred noise plus a moving ramp."""
    base = rng.random((n, 1, size // 4, size // 4, 3))
    base = base.repeat(4, axis=2).repeat(4, axis=3)  # (n, 1, size, size, 3)
    ramp = (
        np.linspace(0, 1, size)[None, None, None, :, None] * np.linspace(0.2, 1, t)[None, :, None, None, None]
    )
    return (255 * np.clip(0.7 * base + 0.3 * ramp, 0, 1)).astype(np.uint8)


def _noisy(v: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(v.astype(np.float64) + rng.normal(0, sigma, v.shape), 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The I3D forward is many small 3D convolutions: on a shared 2-core machine, extra
    threads only add contention (about 7x slower here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_weight_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may pick up real weight files from the user's environment or torch cache."""
    for var in ("WORLDVLA_METRIC_WEIGHTS", "WORLDVLA_LPIPS_TRUNK", "WORLDVLA_LPIPS_HEADS", "WORLDVLA_I3D"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


# ---------------------------------------------------------------- PSNR / SSIM


def test_psnr_per_frame_matches_formula_and_caps_identical_frames() -> None:
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    pred = _noisy(real, 10.0, rng)
    pred[1, 2] = real[1, 2]  # one identical frame
    s = psnr(real, pred)
    mse = ((real.astype(np.float64) - pred) ** 2).mean(axis=(2, 3, 4))  # (N, T)
    with np.errstate(divide="ignore"):
        expected = np.minimum(10 * np.log10(255.0**2 / mse), PSNR_CAP_DB)
    np.testing.assert_allclose(s.per_frame, expected, rtol=1e-6)
    assert s.per_frame[1, 2] == PSNR_CAP_DB
    np.testing.assert_allclose(s.per_step, expected.mean(0))
    assert s.mean == pytest.approx(expected.mean())


def test_ssim_matches_scikit_image_reference_on_64x64() -> None:
    rng = np.random.default_rng(1)
    real = _videos(rng, 2, 2, 64)
    pred = _noisy(real, 25.0, rng)
    s = ssim(real, pred)
    ref = np.array(
        [
            [
                structural_similarity(
                    real[i, t],
                    pred[i, t],
                    channel_axis=-1,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=255,
                )
                for t in range(2)
            ]
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(s.per_frame, ref, atol=1e-5)
    assert 0.1 < s.mean < 0.99
    assert ssim(real, real).per_frame == pytest.approx(np.ones((2, 2)))


def test_metrics_follow_rollout_steps_and_reject_bad_input() -> None:
    rng = np.random.default_rng(2)
    real = _videos(rng, 3, 4, 32)
    pred = np.stack([_noisy(real[:, t], 5.0 + 20.0 * t, rng) for t in range(4)], axis=1)  # worse each step
    assert np.all(np.diff(psnr(real, pred).per_step) < 0)
    assert np.all(np.diff(ssim(real, pred).per_step) < 0)
    assert ssim(real[:, :, :11, :11], pred[:, :, :11, :11]).per_frame.shape == (3, 4)  # smallest size
    with pytest.raises(DataError, match="smaller than 11x11"):
        ssim(real[:, :, :10, :10], pred[:, :, :10, :10])
    with pytest.raises(DataError, match="differ in shape"):
        psnr(real, pred[:, :3])
    with pytest.raises(DataError, match="uint8"):
        psnr(real.astype(np.float32), pred)


# ---------------------------------------------------------------- LPIPS


def test_lpips_architectures_have_the_reference_sizes() -> None:
    # torchvision: AlexNet `features` 2,469,696 parameters, VGG16 `features` 14,714,688;
    # LPIPS heads: one weight per channel of the five tapped layers.
    for net, trunk, heads in (("alex", 2_469_696, 1152), ("vgg", 14_714_688, 1472)):
        m = LPIPS(net)
        assert sum(p.numel() for p in m.trunk.parameters()) == trunk
        assert sum(p.numel() for p in m.lins.parameters()) == heads
    x = torch.zeros(1, 3, 64, 64)
    assert [f.shape[1:] for f in LPIPS("alex").trunk(x)] == [
        (64, 15, 15),
        (192, 7, 7),
        (384, 3, 3),
        (256, 3, 3),
        (256, 3, 3),
    ]


def test_lpips_roundtrips_standard_files_and_is_a_sensible_distance(tmp_path) -> None:
    model = load_lpips(random_init=True, seed=3)
    trunk, heads = tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth"
    save_lpips_weights(model, trunk, heads)
    state = torch.load(trunk, weights_only=True)
    assert "features.0.weight" in state and state["features.10.weight"].shape == (256, 256, 3, 3)
    state["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier too
    torch.save(state, trunk)
    assert torch.load(heads, weights_only=True)["lin0.model.1.weight"].shape == (1, 64, 1, 1)

    loaded = load_lpips(trunk, heads)
    rng = np.random.default_rng(4)
    a = _videos(rng, 4, 1, 64)[:, 0]  # (4, 64, 64, 3)
    b = _videos(rng, 4, 1, 64)[:, 0]
    np.testing.assert_allclose(lpips_distance(loaded, a, b), lpips_distance(model, a, b), rtol=1e-6)

    d_self = lpips_distance(loaded, a, a)
    assert np.all(d_self == 0)
    d_ab, d_ba = lpips_distance(loaded, a, b), lpips_distance(loaded, b, a)
    np.testing.assert_allclose(d_ab, d_ba, rtol=1e-5)
    assert np.all(d_ab > 0)
    by_noise = [lpips_distance(loaded, a, _noisy(a, s, rng)).mean() for s in (4.0, 16.0, 64.0)]
    assert 0 < by_noise[0] < by_noise[1] < by_noise[2]

    v = video_lpips(loaded, a[:, None].repeat(2, 1), b[:, None].repeat(2, 1))
    assert v.per_frame.shape == (4, 2)


def test_lpips_vgg_runs_on_small_frames() -> None:
    rng = np.random.default_rng(5)
    a = _videos(rng, 2, 1, 64)[:, 0]
    d = lpips_distance(load_lpips(net="vgg", random_init=True), a, _noisy(a, 20.0, rng))
    assert d.shape == (2,) and np.all(d > 0)


def test_lpips_missing_or_wrong_files_give_readable_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(DataError, match=r"alexnet-owt-7be5be79\.pth.*alex\.pth"):
        load_lpips()
    with pytest.raises(DataError, match="weight file not found"):
        load_lpips(trunk_path=tmp_path / "nope.pth")
    model = load_lpips(random_init=True)
    save_lpips_weights(model, tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth")
    torch.save({"lin0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="not an LPIPS heads file"):
        load_lpips(tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "bad.pth")
    with pytest.raises(DataError, match="not the expected weight layout"):
        load_lpips(tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth", net="vgg")
    # The weights directory is searched by standard file names.
    monkeypatch.setenv("WORLDVLA_METRIC_WEIGHTS", str(tmp_path))
    assert isinstance(load_lpips(), LPIPS)


# ---------------------------------------------------------------- Fréchet distance


def test_frechet_distance_matches_closed_forms() -> None:
    rng = np.random.default_rng(6)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)

    # Full covariances: Tr((S1 S2)^½) = Σ sqrt(eig(S1^½ S2 S1^½)), a symmetric route.
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    w, u = np.linalg.eigh(s1)
    r1 = u @ np.diag(np.sqrt(w)) @ u.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_survives_singular_covariances() -> None:
    # 5 samples in 40 dimensions: rank-4 covariances, as with few rollout videos.
    rng = np.random.default_rng(7)
    fa, fb = rng.normal(size=(5, 40)), rng.normal(size=(5, 40)) + 0.5
    same = fvd_from_features(fa, fa)
    assert abs(same) < 1e-3 * np.trace(gaussian_stats(fa)[1])
    d_ab, d_ba = fvd_from_features(fa, fb), fvd_from_features(fb, fa)
    assert np.isfinite(d_ab) and d_ab > 0 and d_ab == pytest.approx(d_ba, rel=1e-6)
    assert fvd_from_features(fa, fb, method="eigh") == pytest.approx(d_ab, rel=1e-6)
    with pytest.raises(DataError, match="at least 2"):
        gaussian_stats(fa[:1])


# ---------------------------------------------------------------- I3D + FVD


def test_same_padding_follows_tensorflow() -> None:
    x = torch.zeros(1, 1, 9, 224, 223)
    # T: 9 -> 5 with k7 s2: total 6 = 3 + 3. H: 224 -> 112: total 5 = 2 before + 3 after. W 223: total 6.
    assert _same_pads(x, [7, 7, 7], [2, 2, 2]) == [3, 3, 2, 3, 3, 3]
    assert _same_pads(x, [1, 3, 3], [1, 2, 2]) == [1, 1, 0, 1, 0, 0]


def test_i3d_state_dict_uses_the_rgb_imagenet_layout() -> None:
    state = InceptionI3d().state_dict()
    shapes = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_var": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4f.b2b.conv3d.weight": (128, 32, 3, 3, 3),
        "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for k, shape in shapes.items():
        assert tuple(state[k].shape) == shape, k
    prefixes = {k.split(".")[0] for k in state}
    assert prefixes == {"Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "logits"} | {
        f"Mixed_{b}" for b in ("3b", "3c", "4b", "4c", "4d", "4e", "4f", "5b", "5c")
    }
    assert not any(k.startswith("logits.bn") for k in state)


@pytest.fixture(scope="module")
def i3d_files(tmp_path_factory: pytest.TempPathFactory):
    """A random I3D saved as an ``rgb_imagenet.pt``-style state dict and as TorchScript."""
    d = tmp_path_factory.mktemp("i3d")
    net = load_i3d(random_init=True, seed=8).net
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, d / "rgb_imagenet.pt")  # like the old checkpoint: no batch-norm counters
    export_i3d_torchscript(net, d / "i3d_torchscript.pt")
    return d, net


def test_i3d_torchscript_and_state_dict_give_identical_features(i3d_files) -> None:
    d, net = i3d_files
    from_state = load_i3d(d / "rgb_imagenet.pt")
    from_script = load_i3d(d / "i3d_torchscript.pt")
    assert (from_state.kind, from_script.kind) == ("module", "torchscript")
    for k, v in net.state_dict().items():
        torch.testing.assert_close(from_state.net.state_dict()[k], v, rtol=0, atol=0)
    videos = _videos(np.random.default_rng(9), 2, 9, 32)
    fa = video_features(videos, from_state, resolution=I3D_RES)
    fb = video_features(videos, from_script, resolution=I3D_RES)
    assert fa.shape == (2, 400) and np.std(fa) > 0.1
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-5)


def test_fvd_of_a_set_with_itself_is_zero_and_fvd_is_symmetric() -> None:
    # A 32-class head keeps the covariance square roots cheap; the pipeline is the same as for 400.
    det = i3d_mod.I3DDetector(i3d_mod.init_random(InceptionI3d(num_classes=32), seed=11), "module")
    rng = np.random.default_rng(10)
    real = _videos(rng, 3, 9, 32)
    fake = _noisy(real, 60.0, rng)
    self_fvd = fvd_mod.fvd(real, real, det, resolution=I3D_RES, batch_size=3)
    fr = video_features(real, det, resolution=I3D_RES)
    ff = video_features(fake, det, resolution=I3D_RES)
    assert fr.shape == (3, 32)
    assert abs(self_fvd) < 1e-6 * np.trace(gaussian_stats(fr)[1])
    d_rf, d_fr = fvd_from_features(fr, ff), fvd_from_features(ff, fr)
    assert d_rf > 0.01 * np.trace(gaussian_stats(fr)[1]) and d_rf == pytest.approx(d_fr, rel=1e-6)
    assert fvd_from_features(fr, ff, method="eigh") == pytest.approx(d_rf, rel=1e-6)


def test_fvd_input_checks_and_preprocessing() -> None:
    det = i3d_mod.I3DDetector(InceptionI3d(), "module")
    v = np.zeros((2, 8, 16, 16, 3), np.uint8)
    with pytest.raises(DataError, match="at least 9"):
        fvd_mod.fvd(v, v, det)
    with pytest.raises(DataError, match="not defined"):
        fvd_mod.fvd(v[:, :1], v[:, :1], det)
    with pytest.raises(DataError, match="at least 2"):
        fvd_mod.fvd(np.zeros((1, 9, 16, 16, 3), np.uint8), v, det)
    v[:, :, :, :8] = 255
    x = preprocess(v, resolution=32)
    assert x.shape == (2, 3, 8, 32, 32)
    assert x.min() == -1.0 and x.max() == 1.0


def test_default_metrics_are_none_without_files_and_found_in_the_weights_dir(
    i3d_files, tmp_path, monkeypatch
) -> None:
    lpips_mod.default_lpips.cache_clear()
    fvd_mod.default_fvd.cache_clear()
    try:
        assert lpips_mod.default_lpips() is None and fvd_mod.default_fvd() is None
        with pytest.raises(DataError, match=r"i3d_torchscript\.pt.*rgb_imagenet\.pt"):
            load_i3d()
        d, _ = i3d_files
        save_lpips_weights(load_lpips(random_init=True), d / "alexnet-owt-7be5be79.pth", d / "alex.pth")
        monkeypatch.setenv("WORLDVLA_METRIC_WEIGHTS", str(d))
        lpips_mod.default_lpips.cache_clear()
        fvd_mod.default_fvd.cache_clear()
        lp = lpips_mod.default_lpips()
        a = np.zeros((2, 32, 32, 3), np.uint8)
        assert lp is not None and lp(a, a).tolist() == [0.0, 0.0]
        metric = fvd_mod.default_fvd()
        assert metric is not None and metric.min_frames == 9 and metric.detector.kind == "torchscript"
    finally:
        lpips_mod.default_lpips.cache_clear()
        fvd_mod.default_fvd.cache_clear()
