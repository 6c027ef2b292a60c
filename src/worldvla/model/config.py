"""Model configuration: a typed, frozen dataclass with named presets (the model sizes).

It sits next to the model it shapes (:mod:`worldvla.model.build` sizes a preset to a
vocabulary and builds the transformer) and imports nothing but the registry, so the
training presets read it without loading torch. Every preset has a tiny sibling that tests
and laptops run in seconds (``tiny``). Other subsystems keep their own frozen configs next
to their code (tokenizers, data, training); :mod:`worldvla.experiments` composes them into
the named experiment presets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from worldvla.utils.registry import Registry


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer in the Chameleon/Llama style (RMSNorm, RoPE, SwiGLU).

    The fields after ``init_std`` are the remaining options of Chameleon checkpoints
    (docs/chameleon.md); their defaults are the behaviour every earlier checkpoint was
    trained with, so a stored config without them loads unchanged.
    """

    vocab_size: int = 1280
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int | None = None  # None = n_heads (no grouped-query attention)
    ffn_hidden: int = 1024  # SwiGLU inner width
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    qk_norm: bool = False  # Chameleon-7B uses QK-norm for stability in mixed-modal training
    dropout: float = 0.0  # residual dropout (reference recipe: 0.05)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    # Chameleon's ``swin_norm`` option: normalize each sub-layer's *output* before the
    # residual add, ``x + norm(attn(x))``, instead of its input, ``x + attn(norm(x))``.
    swin_norm: bool = False
    # Epsilon of the QK LayerNorm; None = ``norm_eps``. Chameleon fixes it at 1e-5 whatever
    # its RMSNorm epsilon (transformers' ChameleonLayerNorm).
    qk_norm_eps: float | None = None
    attention_bias: bool = False  # biases on the q/k/v/o projections (Chameleon: none)
    mlp_bias: bool = False  # biases on the SwiGLU projections (Chameleon: none)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and f.name not in ("dropout",)
                and v <= 0
            ):
                raise ValueError(f"ModelConfig.{f.name} must be > 0, got {v}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        return replace(self, vocab_size=vocab_size)


MODEL_PRESETS: Registry[ModelConfig] = Registry("model preset")
MODEL_PRESETS.register(
    "tiny",
    ModelConfig(d_model=64, n_layers=2, n_heads=4, ffn_hidden=176, max_seq_len=512),
    "tests and laptops: well under 1M parameters",
)
# CPU models for the embedded Meta-World benchmark. On 2 cores `compact` (~4M
# parameters) trains ~2.8x and `mini` (~2.4M, the quickstart's) ~4x more tokens per
# second than `small`, which buys epochs in a fixed budget
# (benchmarks/bench_model.py --preset NAME).
MODEL_PRESETS.register(
    "compact",
    ModelConfig(d_model=256, n_layers=4, n_heads=4, ffn_hidden=704, max_seq_len=1024),
    "CPU model, ~4M parameters",
)
MODEL_PRESETS.register(
    "mini",
    ModelConfig(d_model=192, n_layers=4, n_heads=3, ffn_hidden=512, max_seq_len=1024),
    "CPU model of the quickstart, ~2.4M parameters",
)
MODEL_PRESETS.register(
    "small",
    ModelConfig(d_model=384, n_layers=6, n_heads=6, ffn_hidden=1024, max_seq_len=1024),
    "wider, deeper CPU model, ~12M parameters",
)
# The reference model, Chameleon-7B: the values of its config.json (transformers'
# ChameleonConfig defaults: hidden 4096, 32 layers, 32 heads = 32 kv heads, SwiGLU 11008,
# vocab 65,536, RMSNorm eps 1e-5, RoPE theta 10,000, max 4,096 positions, QK-norm with
# eps 1e-5, no swin norm, no biases, untied head) plus the recipe's residual dropout.
# Built on the meta device in tests; `worldvla convert` reads the real checkpoints into it.
MODEL_PRESETS.register(
    "chameleon-7b",
    ModelConfig(
        vocab_size=65536,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        ffn_hidden=11008,
        max_seq_len=4096,
        qk_norm=True,
        qk_norm_eps=1e-5,
        norm_eps=1e-5,
        rope_theta=10000.0,
        dropout=0.05,
    ),
    "the reference model's shape (Chameleon-7B), residual dropout 0.05",
)


def model_preset(name: str) -> ModelConfig:
    """The model preset called ``name``; a typo gets a "did you mean" (ConfigError)."""
    return MODEL_PRESETS.get(name)
