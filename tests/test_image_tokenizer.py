"""VQ image tokenizer: interface contract, training signal, checkpoint round trip, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldvla.data.episodes import Episode, write_episodes
from worldvla.errors import ConfigError, DataError
from worldvla.tokenizers.image_base import ImageTokenizer, psnr
from worldvla.tokenizers.image_loader import load_image_tokenizer
from worldvla.tokenizers.vq import PRESETS, VQConfig, VQTokenizer, vq_preset
from worldvla.tokenizers.vq_train import VQTrainConfig, code_stability, code_stats, train_vq


def smooth_images(n, size=16, seed=0):
    """Blobs of colour on a gradient: learnable structure, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.float64)
    for i in range(n):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)[..., None]
        base = np.stack([xx, yy, 1 - xx], -1) * 120 + 60
        out[i] = np.where(blob, rng.uniform(0, 255, 3), base)
    return out.round().astype(np.uint8)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions are several times slower with 2 threads on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=["tiny", "tiny-vq"])
def tok(request):
    torch.manual_seed(0)
    t = VQTokenizer(vq_preset(request.param))
    t.init_codebook(smooth_images(16, seed=1))
    t.model.eval()
    return t


def test_uninitialised_codebook_is_refused():
    t = VQTokenizer(vq_preset("tiny-vq"))
    fp = t.fingerprint()
    with pytest.raises(ConfigError, match="not initialised"):
        t.encode(smooth_images(2))
    assert t.fingerprint() == fp  # nothing changed behind the caller's back
    t.init_codebook(smooth_images(8))
    assert t.fingerprint() != fp and t.encode(smooth_images(2)).shape == (2, 4, 4)


def test_encode_decode_contract(tok):
    assert isinstance(tok, ImageTokenizer)
    imgs = smooth_images(5)
    codes = tok.encode(imgs)
    assert codes.shape == (5, *tok.grid) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    assert torch.equal(tok.encode(torch.from_numpy(imgs)), codes)  # tensors accepted too
    out = tok.decode(codes)
    assert out.shape == imgs.shape and out.dtype == np.uint8
    # decode(encode(x)) is the network's own quantized reconstruction, rounded to uint8.
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        rec, fwd_codes, _ = tok.model(x)
    assert torch.equal(fwd_codes, codes)
    expected = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert tok.decode(codes.numpy().astype(np.uint16)).shape == imgs.shape  # cache dtype


def test_bad_inputs_are_data_errors(tok):
    with pytest.raises(DataError, match="uint8"):
        tok.encode(np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(DataError, match=r"\(N, 16, 16, 3\)"):
        tok.encode(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"\(N, 16, 16, 3\)"):
        tok.encode(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DataError, match="must lie in"):
        tok.decode(torch.full((1, *tok.grid), tok.codebook_size))
    with pytest.raises(DataError, match="shape"):
        tok.decode(torch.zeros((1, 3, 3), dtype=torch.long))


@pytest.mark.parametrize("preset", ["tiny", "tiny-vq"])
def test_loss_drops_in_a_few_steps(preset):
    torch.manual_seed(0)
    model = VQTokenizer(vq_preset(preset)).model.train()
    x = torch.from_numpy(smooth_images(32)).permute(0, 3, 1, 2).float() / 127.5 - 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        rec, _, aux = model(x)
        recon = F.mse_loss(rec, x)
        losses.append(recon.item())
        opt.zero_grad()
        (recon + aux).backward()
        opt.step()
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses[::8]


def test_checkpoint_round_trip(tmp_path, tok):
    imgs = smooth_images(4)
    tok.save(tmp_path / "tok")
    loaded = load_image_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, VQTokenizer) and loaded.cfg == tok.cfg
    assert loaded.fingerprint() == tok.fingerprint()
    assert torch.equal(loaded.encode(imgs), tok.encode(imgs))
    np.testing.assert_array_equal(loaded.decode(tok.encode(imgs)), tok.decode(tok.encode(imgs)))
    # The fingerprint covers the weights: one changed parameter changes it.
    with torch.no_grad():
        next(loaded.model.parameters()).add_(1e-3)
    loaded._fingerprint = None
    assert loaded.fingerprint() != tok.fingerprint()
    # ... and the config, and a config/weights pair from two saves is refused.
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    meta["fingerprint"] = "0" * 16
    (tmp_path / "tok" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="fingerprint"):
        load_image_tokenizer(tmp_path / "tok")


def test_factory_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an image tokenizer"):
        load_image_tokenizer(tmp_path / "empty")


def test_config_validation_and_presets():
    for name in PRESETS:
        cfg = vq_preset(name)
        assert cfg.image_size // cfg.downsample == cfg.grid[0], name
    assert vq_preset("mw64").grid == (8, 8) and vq_preset("mw64").vocab_size == 1000
    assert vq_preset("mw64-vq").vocab_size == 1024 and vq_preset("mw64-vq").quantizer == "vq"
    assert vq_preset("libero256").grid == (16, 16) and vq_preset("libero256").vocab_size == 8192
    with pytest.raises(ConfigError, match="Did you mean 'mw64'"):
        vq_preset("mw46")
    with pytest.raises(ConfigError, match="downsample"):
        VQConfig(downsample=8, channels=(32, 64))
    with pytest.raises(ConfigError, match="quantizer"):
        VQConfig(quantizer="lfq")
    assert VQConfig.from_dict(vq_preset("tiny").to_dict()) == vq_preset("tiny")
    # The preset's name is a label: not saved with the weights, not part of equality.
    assert "name" not in vq_preset("tiny").to_dict()
    assert VQConfig.from_dict(vq_preset("tiny").to_dict()).name == "custom"


def test_code_stats():
    usage, ppl = code_stats(np.array([0, 0, 1, 1]), 4)
    assert usage == 0.5 and ppl == pytest.approx(2.0)
    assert psnr(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 4, 3), np.uint8)) == 100.0


def test_train_tokenizer_command(tmp_path):
    from worldvla.cli import main

    eps = [
        Episode(f"demo_{i}", np.zeros((6, 2), np.float32), {"corner": smooth_images(6, seed=i)}, "x", "t")
        for i in range(4)
    ]
    write_episodes(tmp_path / "eps.hdf5", eps, {})
    out = tmp_path / "tok"
    rc = main(
        [
            "train-tokenizer",
            "--episodes",
            str(tmp_path / "eps.hdf5"),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--steps",
            "3",
            "--no-progress",
        ]
    )
    assert rc == 0
    for name in ("config.json", "model.safetensors", "metrics.json", "reconstructions.png"):
        assert (out / name).exists(), name
    assert any((out / "tb").iterdir())
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 3 and m["val_frames"] == 6 and m["train_frames"] == 18
    assert m["data"]["val_episodes"] and 0 < m["val_codebook_usage"] <= 1 and m["val_psnr"] > 0
    assert load_image_tokenizer(out).fingerprint() == m["fingerprint"]
    # Wrong preset size for the frames: a readable error, exit status 2.
    assert (
        main(
            [
                "train-tokenizer",
                "--episodes",
                str(tmp_path / "eps.hdf5"),
                "--out",
                str(out),
                "--steps",
                "1",
                "--no-progress",
            ]
        )
        == 2
    )


def test_train_vq_time_cap_stops_early_and_says_so():
    frames = smooth_images(20)
    cfg = replace(VQTrainConfig(preset="tiny"), steps=10**6, minutes=0.02, eval_every=10**6)
    _, m = train_vq(cfg, frames[:16], frames[16:], progress=False)
    assert 0 < m["steps"] < 10**6 and m["seconds"] < 10
    assert m["stopped"] == "time cap" and m["total_steps"] == 10**6
    _, full = train_vq(replace(cfg, steps=3, minutes=None), frames[:16], frames[16:], progress=False)
    assert full["steps"] == full["total_steps"] == 3 and full["stopped"] is None


def test_train_vq_schedule_depends_on_steps_not_on_the_clock(monkeypatch):
    """A cap that does not bite changes nothing, however slow the machine: the same weights."""
    import worldvla.tokenizers.vq_train as vq_train

    frames = smooth_images(20)
    cfg = replace(VQTrainConfig(preset="tiny"), steps=6, warmup_steps=2, eval_every=10**6)
    fast, _ = train_vq(cfg, frames[:16], frames[16:], progress=False)
    # A slow machine: right after the start, 99% of a 10-minute cap is spent (and stays so).
    reads = iter([0.0])
    monkeypatch.setattr(vq_train.time, "monotonic", lambda: next(reads, 0.99 * 600))
    slow, m = train_vq(replace(cfg, minutes=10), frames[:16], frames[16:], progress=False)
    assert m["steps"] == 6 and m.get("stopped") is None
    for (k, a), b in zip(fast.model.state_dict().items(), slow.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_train_vq_bf16_autocast_learns():
    """The bf16 option trains (losses in float32) and leaves a float32 tokenizer.

    The untrained tiny model reconstructs these held-out frames at ~13 dB; 60 steps reach
    ~23 dB in float32 and in bf16 alike.
    """
    frames = smooth_images(24)
    cfg = replace(VQTrainConfig(preset="tiny"), steps=60, bf16=True, lr=3e-3, warmup_steps=5, eval_every=30)
    tok, m = train_vq(cfg, frames[:20], frames[20:], progress=False)
    assert all(p.dtype == torch.float32 for p in tok.model.parameters())
    assert m["val_psnr"] > 19, m["history"]
    assert tok.encode(frames[:2]).shape == (2, *tok.grid)


def test_code_stability_counts_codes_of_unchanged_patches():
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    frames[1, :4, :4] = 200  # frame 1: top-left patch changes
    codes = np.zeros((3, 2, 2), np.int64)
    codes[1, 0, 0] = 5  # ... and its code with it (fine)
    codes[1, 1, 1] = 7  # a code flips on an unchanged patch (frame 0 -> 1) and back (1 -> 2)
    m = code_stability(frames, codes)
    assert m["codes_changed"] == pytest.approx(4 / 8)
    # still patches: 3 of 4 in pair 0->1, 3 of 4 in pair 1->2; the (1, 1) code changed in both
    assert m["code_stability"] == pytest.approx(4 / 6)


def test_channel_norm_codes_see_only_a_window_around_their_patch():
    """mw64-local: a code's receptive field is 41 px, so pixels more than 16 px away from a
    patch cannot change its code; with GroupNorm (mw64) they can change every code."""
    torch.manual_seed(0)
    local = VQTokenizer(vq_preset("mw64-local"))
    x = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    y = x.copy()
    y[0, :8, :8] = 255 - y[0, :8, :8]  # the top-left patch only
    with torch.no_grad():
        zx = local.model.encoder(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1)
        zy = local.model.encoder(torch.from_numpy(y).permute(0, 3, 1, 2).float() / 127.5 - 1)
    moved = (zx - zy).abs().amax(1)[0] > 0  # (8, 8) latent positions that changed
    assert moved[0, 0]
    assert not moved[4:, :].any() and not moved[:, 4:].any()  # > 16 px away: untouched
    glob = VQTokenizer(vq_preset("mw64"))
    with torch.no_grad():
        gx = glob.model.encoder(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1)
        gy = glob.model.encoder(torch.from_numpy(y).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert ((gx - gy).abs().amax(1)[0] > 0).all()


def test_norm_is_validated_and_old_configs_load_as_group_norm():
    with pytest.raises(ConfigError, match="norm"):
        VQConfig(norm="batch")
    d = VQConfig().to_dict()
    assert "norm" not in d  # at its default: tokenizers saved before the field keep their fingerprint
    assert VQConfig.from_dict(d).norm == "group"
    assert VQConfig.from_dict(vq_preset("mw64-local").to_dict()) == vq_preset("mw64-local")
