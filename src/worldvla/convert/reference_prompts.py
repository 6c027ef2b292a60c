"""What a converted WorldVLA release needs to build the reference's prompts token for token.

The released checkpoints were trained and evaluated on prompts made by the reference's
item processor (``worldvla/data/item_processor.py``, ``FlexARItemProcessor_Action``, via
``libero_util/Chameleon_utils.get_action_Chameleon_dis_awm_ck`` with ``--his
2h_1a_img_only``). Read step by step, an action query at step ``t`` of a LIBERO episode is::

    <s> text("What action should the robot take to {instruction}?")
        IMG(t-1) IMG(t) <reserved08706>

- one human turn of the xllmx conversation (``data/convertsation.py``: each turn is its
  message followed by ``<reserved08706>``; no speaker names are written), tokenized with
  BOS and without EOS (``MMConvItemProcessor.process_item``); the ``<|image|>`` symbols are
  added tokens, so the text before them is tokenized on its own and each is replaced by
  its frame;
- a frame is ``<racm3:break>``, two grid tokens, the codes row by row each row closed by
  ``<reserved08799>``, then ``<eoss>``; the grid tokens count 32-pixel patches, i.e. 2×2
  codes of the 16-pixel VQGAN (``Vocab.grid_unit``); the frame is the agent view at the
  rendering size (the evaluation's ``ItemProcessor(target_size=256)``, 512 at 512², whose
  crop and resize are the identity on a frame of that size);
- ``IMG(t-1)`` is there only once a step has been taken (``his_img[-1:]``; the training
  conversations likewise start at ``max(0, j - his + 1)``), so an episode's first query
  holds one frame (``DataLayout.pad_history = False``).

This is :func:`worldvla.sequence.action_prompt_ids` with the converted checkpoint's
vocabulary and layout. The world-model samples the releases were also trained on
(``data/world_model_conv_generation.py`` with ``--his 1``) are a turn ``"Generate the next
image based on the provided sequence of historical images and corresponding
actions.<|image|><|action|>"`` answered by ``<|image|>``: :func:`worldvla.sequence.
world_prompt_ids` with that wording (:data:`REFERENCE_PROMPTS`), the action block being
``<reserved10000>``, the 7 bins, ``<reserved15000>``. The ids of the named tokens are
checked here against the text tokenizer file the conversion is given, the way the
reference looks them up.
"""

from __future__ import annotations

from worldvla.errors import ConfigError
from worldvla.sequence import PromptConfig
from worldvla.tokenizers.text import HFTokenizer, TextTokenizer
from worldvla.vocab import (
    CHAMELEON_GRID_UNIT,
    CHAMELEON_TOKEN_NAMES,
    Vocab,
    chameleon_image_code,
    chameleon_token_names,
)

# What the layout of a converted release says beyond M, K, D and the camera (module docstring).
REFERENCE_PAD_HISTORY = False
REFERENCE_PROMPTS = PromptConfig(
    world_prompt="Generate the next image based on the provided sequence of historical images "
    "and corresponding actions."
)


def reference_vocab() -> Vocab:
    """The vocabulary of the released checkpoints: the reference layout, grids in 32-pixel patches."""
    return Vocab.chameleon_reference(grid_unit=CHAMELEON_GRID_UNIT)


def check_frame_grid(grid: tuple[int, int], vocab: Vocab) -> None:
    """Refuse a code grid the vocabulary cannot announce (an image size not a multiple of 32)."""
    for side in grid:
        try:
            vocab.grid_id(side)
        except ValueError:
            raise ConfigError(
                f"a {grid[0]}x{grid[1]}-code frame cannot be announced in the reference's 32-pixel "
                "patches: the image size must be a multiple of 32 (256 or 512 for the releases)"
            ) from None


def check_text_tokenizer(text: TextTokenizer, vocab: Vocab, where: str) -> None:
    """Check that ``text`` gives the reference's named tokens the ids ``vocab`` uses.

    Special and grid tokens by name, every image code through its ``IMGIMG…`` entry, and the
    turn separator as text, since the reference's conversation writes it into the string it
    tokenizes. A byte tokenizer (plumbing tests) has no names and is not checked.
    """
    if not isinstance(text, HFTokenizer):
        return
    entries = text.vocabulary()
    wrong = [
        f"{name}: {entries.get(name)} (expected {want})"
        for name, want in chameleon_token_names(vocab).items()
        if entries.get(name) != want
    ]
    wrong += _image_code_mismatches(entries, vocab)
    sep_name = CHAMELEON_TOKEN_NAMES["sep"]
    if text.encode(sep_name) != [vocab.sep]:
        wrong.append(f"{sep_name} as text: {text.encode(sep_name)} (expected [{vocab.sep}])")
    if wrong:
        raise ConfigError(
            f"{where}: not the Chameleon text tokenizer the reference prompts were built with: "
            + "; ".join(wrong[:5])
            + (f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else "")
        )


def _image_code_mismatches(entries: dict[str, int], vocab: Vocab) -> list[str]:
    """Differences between the tokenizer's ``IMGIMG…`` entries and ``vocab.image_ids``."""
    codes = {code: i for name, i in entries.items() if (code := chameleon_image_code(name)) is not None}
    if sorted(codes) != list(range(vocab.image_codes)):
        return [f"{len(codes)} image-code entries (expected codes 0..{vocab.image_codes - 1})"]
    return [
        f"image code {code}: id {i} (expected {vocab.image_ids(code)})"
        for code, i in sorted(codes.items())
        if i != vocab.image_ids(code)
    ]
