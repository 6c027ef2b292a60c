"""Chameleon VQGAN loader: reference file layout (vqgan.yaml + vqgan.ckpt) -> ImageTokenizer.

The real weights cannot be downloaded in tests, so a randomly initialised model of the same
architecture (smaller ``ch``, read back from the yaml) is saved in the reference format.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from worldvla.errors import DataError
from worldvla.tokenizers.chameleon import ChameleonTokenizer, ChameleonVQConfig, ChameleonVQGAN
from worldvla.tokenizers.image_base import ImageTokenizer
from worldvla.tokenizers.image_loader import load_image_tokenizer

SMALL = ChameleonVQConfig(
    embed_dim=8,
    n_embed=64,
    resolution=32,
    ch=32,
    ch_mult=(1, 1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    z_channels=16,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions are several times slower with 2 threads on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_reference(tmp_path, cfg=SMALL, extra=None, drop=None, seed=0):
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = ChameleonVQGAN(cfg)
    state = dict(model.state_dict())
    state.update(extra or {})
    for k in drop or ():
        del state[k]
    (tmp_path / "vqgan.yaml").write_text(yaml.safe_dump(cfg.to_yaml_dict()))
    # As shipped: a checkpoint dict with "state_dict" (plus training-only loss networks).
    torch.save({"state_dict": state, "global_step": 0}, tmp_path / "vqgan.ckpt")
    return model


def test_reference_architecture_keys():
    """The key names and shapes of the full-size reference model (no weights allocated)."""
    with torch.device("meta"):
        model = ChameleonVQGAN(ChameleonVQConfig())
    sd = model.state_dict()
    assert sd["quantize.embedding.weight"].shape == (8192, 256)
    assert sd["encoder.conv_in.weight"].shape == (128, 3, 3, 3)
    assert sd["encoder.down.4.block.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert sd["encoder.down.2.block.0.nin_shortcut.weight"].shape == (256, 128, 1, 1)
    assert "encoder.down.3.downsample.conv.weight" in sd and "encoder.down.4.downsample.conv.weight" not in sd
    assert sd["decoder.up.0.block.2.conv1.weight"].shape == (128, 128, 3, 3)
    assert "decoder.up.4.upsample.conv.weight" in sd and "decoder.up.0.upsample.conv.weight" not in sd
    assert sd["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert sd["quant_conv.weight"].shape == (256, 256, 1, 1)
    assert sd["post_quant_conv.weight"].shape == (256, 256, 1, 1)
    assert ChameleonVQConfig().grid == (16, 16)


def test_load_encode_decode(tmp_path):
    ref = _write_reference(tmp_path, extra={"loss.discriminator.main.0.weight": torch.zeros(1)})
    tok = load_image_tokenizer(tmp_path)
    assert isinstance(tok, ChameleonTokenizer) and isinstance(tok, ImageTokenizer)
    assert (tok.image_size, tok.grid, tok.codebook_size) == (32, (8, 8), 64)
    assert "encoder.down.2.attn.0.q.weight" in tok.model.state_dict()  # attn at resolution 8 from the yaml
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    codes = tok.encode(imgs)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    # Same codes as the model that wrote the files (nearest code by Euclidean distance).
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = ref.quant_conv(ref.encoder(x)).permute(0, 2, 3, 1)  # (N, h, w, D)
        brute = torch.cdist(z.reshape(-1, 8), ref.quantize.embedding.weight).argmin(1).reshape(3, 8, 8)
    assert torch.equal(codes, brute)
    out = tok.decode(codes)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    # Loading by file path works too, and the fingerprint is stable across loads.
    assert load_image_tokenizer(tmp_path / "vqgan.ckpt").fingerprint() == tok.fingerprint()
    with pytest.raises(DataError, match=r"\(N, 32, 32, 3\)"):
        tok.encode(np.zeros((1, 16, 16, 3), np.uint8))


def test_key_mismatch_is_a_clear_error(tmp_path):
    _write_reference(tmp_path, drop=["quantize.embedding.weight"], extra={"encoder.bogus": torch.zeros(2)})
    with pytest.raises(DataError, match=r"1 missing .*quantize\.embedding\.weight.*encoder\.bogus"):
        load_image_tokenizer(tmp_path)


def test_shape_mismatch_is_a_clear_error(tmp_path):
    _write_reference(tmp_path)
    other = ChameleonVQConfig(**{**SMALL.__dict__, "n_embed": 128})
    (tmp_path / "vqgan.yaml").write_text(yaml.safe_dump(other.to_yaml_dict()))
    with pytest.raises(DataError, match="wrong shape"):
        load_image_tokenizer(tmp_path)


def test_save_round_trip(tmp_path):
    _write_reference(tmp_path / "a")
    tok = load_image_tokenizer(tmp_path / "a")
    tok.save(tmp_path / "b")
    again = load_image_tokenizer(tmp_path / "b")
    assert again.fingerprint() == tok.fingerprint()
