"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def vq_dir(tmp_path_factory):
    """A Chameleon VQGAN of the reference format at a tiny width (8,192 codes, 16-pixel codes:
    256² -> 16×16), saved as the release's files."""
    import torch

    from worldvla.tokenizers.chameleon import ChameleonTokenizer, ChameleonVQConfig, ChameleonVQGAN

    d = tmp_path_factory.mktemp("vqgan")
    cfg = ChameleonVQConfig(ch=32, z_channels=8, embed_dim=8, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1)
    torch.manual_seed(0)
    ChameleonTokenizer(ChameleonVQGAN(cfg)).save(d)
    return d
