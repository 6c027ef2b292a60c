"""A converted WorldVLA release builds the reference's action prompts token for token.

The expected ids are derived here from the reference code (repository
alibaba-damo-academy/WorldVLA), step by step, for the LIBERO evaluation it publishes
(``exps_256_all/eval_libero_*.sh``: ``eval_solver_libero_256.py --his 2h_1a_img_only``):

1. ``eval_solver_libero_256.py`` ``val_libero``: ``item_processor = ItemProcessor(target_size=256)``
   (512 in ``eval_solver_libero_512.py``); every control step appends the frame to ``his_img``
   after the query, so the first query has no history.
2. ``libero_util/Chameleon_utils.py`` ``get_action_Chameleon_dis_awm_ck``, case
   ``2h_1a_img_only``: one human message ``"What action should the robot take to " + task +
   "?" + "<|image|>" * len(his_img[-1:]) + "<|image|>"``, images ``his_img[-1:] + [cur_img]``,
   no assistant turn; the tokens are fed as they are (``img_only``: nothing cut).
3. ``data/convertsation.py`` ``Conversation.process``: a turn is ``message + "<reserved08706>"``;
   no role names are written.
4. ``xllmx/data/item_processor.py`` ``MMConvItemProcessor.process_item``:
   ``tokenizer.encode(conversation, bos=True, eos=False)`` -> ``[<s>] + ids``; ``<|image|>`` was
   added to the tokenizer (``add_tokens``), so the text before it is tokenized alone and the
   symbol is replaced by the frame's tokens (``replace_media_token_with_media``).
5. ``data/item_processor.py`` ``FlexARItemProcessor_Action.process_image``: ``var_center_crop``
   to the 256×256 crop (identity on a 256² frame), codes ``(size // 16)²`` mapped to token ids by
   ``convert_img2bp2`` (code c -> the ``IMGIMG…`` entry of c, id 4 + c), each row followed by
   ``<reserved08799>``; framed as ``<racm3:break>, grid(size // 32), grid(size // 32), …, <eoss>``
   with ``get_n_grids_token(n) = <reserved0{8800 + n}>``.

Ids of those names in Chameleon's tokenizer (the reference hard-codes some of them:
``decode_image`` subtracts 8804 from a grid token, ``decode_token_ids_to_actions`` 10004 from
an action token, ``generate`` stops at 8710): ``<s>`` 0, ``IMGIMG…`` 4 + c, ``<eoss>`` 8196,
``<racm3:break>`` 8197, ``<reserved0N>`` N + 4 (8710, 8803, 8804 + n). The text tokens come
from a stand-in tokenizer (the real Chameleon BPE is not downloadable here) with the same
names at the same ids, so the words have known ids: What 20000 … ? 20011.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import worldvla.policy as policy_module
from worldvla.convert.chameleon import UNUSED_VQ_CONFIG
from worldvla.convert.checkpoints import convert_from_hf
from worldvla.convert.reference_prompts import reference_vocab
from worldvla.data.datasets import DataLayout
from worldvla.errors import ConfigError
from worldvla.policy import WorldVLAPolicy
from worldvla.sequence import action_prompt_ids, world_prompt_ids
from worldvla.tokenizers.text import HFTokenizer
from worldvla.train.checkpoint import load_bundle

INSTRUCTION = "put the bowl on the plate"
WORDS = ["What", "action", "should", "the", "robot", "take", "to", "put", "bowl", "on", "plate", "?"]
WORDS += ["Generate", "next", "image", "based", "provided", "sequence", "of", "historical", "images"]
WORDS += ["and", "corresponding", "actions", "."]
# "What action should the robot take to put the bowl on the plate?" in the stand-in tokenizer.
TEXT_IDS = [20000, 20001, 20002, 20003, 20004, 20005, 20006, 20007, 20003, 20008, 20009, 20003, 20010, 20011]
# "Generate the next image based on the provided sequence of historical images and corresponding actions."
WORLD_TEXT_IDS = [20012, 20003, 20013, 20014, 20015, 20009, 20003, 20016, 20017, 20018, 20019, 20020, 20021]
WORLD_TEXT_IDS += [20022, 20023, 20024]
BOS, BOI, EOI, NEW_LINE, SEP = 0, 8197, 8196, 8803, 8710


def _image_name(code: int) -> str:
    """Chameleon's name of image code ``code``: its digits as letters A-J (VocabTranslation.bpe2img)."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def write_standin_tokenizer(path, **moved: int):
    """A word-level ``tokenizers`` JSON with Chameleon's names at Chameleon's ids (``moved``: other ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    names = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<eoss>": 8196, "<racm3:break>": 8197}
    names |= {_image_name(c): 4 + c for c in range(8192)}
    names |= {f"<reserved{n:05d}>": n + 4 for n in (8706, 8799, *range(8801, 8865), 10000, 15000)}
    names |= {w: 20000 + i for i, w in enumerate(WORDS)}
    names |= moved
    tok = Tokenizer(models.WordLevel(names, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([n for n in names if n.startswith("<")])
    tok.save(str(path))
    return path


def reference_frame(codes: np.ndarray) -> list[int]:
    """Step 5: ``<racm3:break>``, two grid tokens in 32-pixel patches, rows of ``4 + c`` and
    ``<reserved08799>``, ``<eoss>``."""
    h, w = codes.shape
    rows = [[4 + int(c) for c in row] + [NEW_LINE] for row in codes]
    return [BOI, 8804 + h // 2, 8804 + w // 2, *sum(rows, []), EOI]


def reference_prompt(frames: list[np.ndarray]) -> list[int]:
    """Steps 2-4: ``<s>``, the message text, its frames (oldest first), ``<reserved08706>``."""
    return [BOS, *TEXT_IDS, *sum((reference_frame(f) for f in frames), []), SEP]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return write_standin_tokenizer(tmp_path_factory.mktemp("tok") / "text_tokenizer.json")


def test_the_reference_conversation_string_tokenizes_as_written_down(standin):
    """Steps 2-4 done the reference's way: the whole turn as one string, ``<|image|>`` added to
    the tokenizer, BOS in front; the placeholders then stand where the frames go."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(standin))
    tok.add_tokens(["<|image|>"])
    image = tok.token_to_id("<|image|>")
    turn = "What action should the robot take to " + INSTRUCTION + "?" + "<|image|>" * 2 + "<reserved08706>"
    assert [BOS, *tok.encode(turn, add_special_tokens=False).ids] == [BOS, *TEXT_IDS, image, image, SEP]


def test_reference_prompt_of_a_32_pixel_frame_written_out(standin):
    codes = np.array([[7, 8191], [0, 100]])
    want = [BOS, *TEXT_IDS, BOI, 8805, 8805, 11, 8195, NEW_LINE, 4, 104, NEW_LINE, EOI, SEP]
    got = action_prompt_ids(reference_vocab(), HFTokenizer(standin), INSTRUCTION, [codes])
    assert got.tolist() == want == reference_prompt([codes])


def test_reference_prompt_of_libero_256_frames_first_and_later_queries(standin):
    """256² agent view: 16×16 codes announced as 8×8 patches (8812); one frame, then two."""
    rng = np.random.default_rng(0)
    previous, current = rng.integers(0, 8192, (2, 16, 16))
    vocab, text = reference_vocab(), HFTokenizer(standin)
    first = action_prompt_ids(vocab, text, INSTRUCTION, [current])
    assert first.tolist() == reference_prompt([current])
    assert first[1 + len(TEXT_IDS) : 1 + len(TEXT_IDS) + 3].tolist() == [BOI, 8812, 8812]
    assert len(first) == 1 + 14 + (4 + 16 * 17) + 1
    later = action_prompt_ids(vocab, text, INSTRUCTION, [previous, current])
    assert later.tolist() == reference_prompt([previous, current])


def test_512_frames_are_announced_as_16_patches():
    assert reference_vocab().grid_id(32) == 8804 + 16


# ---------------------------------------------------------------------------- conversion
@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random transformers Chameleon with the reference's vocabulary size, saved as the releases are."""
    transformers = pytest.importorskip("transformers")  # the dev extra pins it

    cfg = transformers.ChameleonConfig(
        vocab_size=65536,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        vocabulary_map={},
        vq_config=UNUSED_VQ_CONFIG,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("hf")
    transformers.ChameleonForConditionalGeneration(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def converted(hf_dir, vq_dir, standin, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "libero_goal_256"
    text = str(standin)
    return convert_from_hf(hf_dir, out, image_tokenizer=vq_dir, text_tokenizer=text, image_size=256)[0]


def test_converted_checkpoint_records_the_reference_framing(converted):
    config = json.loads((converted / "config.json").read_text())
    layout = DataLayout.from_dict(config["layout"])
    assert (layout.grid, layout.history, layout.pad_history) == ((16, 16), 2, False)
    assert json.loads((converted / "vocab.json").read_text())["grid_unit"] == 2
    assert config["vocab_fingerprint"] == reference_vocab().fingerprint()


def test_converted_policy_builds_the_reference_prompts(converted, monkeypatch):
    """Episode start (one frame), then the query K steps later (frames t-1 and t), as val_libero."""
    seen = []

    def spy(model, vocab, prompts, **kw):
        seen.extend(p.tolist() for p in prompts)
        return generate(model, vocab, prompts, **kw)

    generate = policy_module.generate_actions
    monkeypatch.setattr(policy_module, "generate_actions", spy)
    policy = WorldVLAPolicy.from_pretrained(converted)
    frames = np.random.default_rng(1).integers(0, 256, (6, 256, 256, 3), dtype=np.uint8)
    for f in frames:
        policy.select_action({"image": f, "instruction": INSTRUCTION})
    codes = policy.image_tokenizer.encode(frames).numpy()  # (6, 16, 16)
    assert len(seen) == 2  # chunks of K=5 executed open-loop: queries at steps 0 and 5
    assert seen[0] == reference_prompt([codes[0]])
    assert seen[1] == reference_prompt([codes[4], codes[5]])


def test_converted_layout_builds_the_reference_world_model_prompt(converted):
    """``data/world_model_conv_generation.py`` (``--his 1``): the turn ``"Generate the next image
    based on the provided sequence of historical images and corresponding actions." +
    "<|image|><|action|>"`` then ``<reserved08706>``; ``process_action``: ``<reserved10000>``,
    ``np.digitize(…) + 10004 + 1`` (bin b -> 10006 + b), ``<reserved15000>``."""
    bundle = load_bundle(converted)
    codes = np.random.default_rng(2).integers(0, 8192, (16, 16))
    bins = np.array([0, 255, 3, 127, 128, 7, 200])
    got = world_prompt_ids(bundle.vocab, bundle.text_tokenizer, codes, bins, bundle.layout.prompts)
    want = [BOS, *WORLD_TEXT_IDS, *reference_frame(codes), 10004, *(10006 + bins).tolist(), 15004, SEP]
    assert got.tolist() == want


def test_conversion_refuses_what_the_reference_prompts_cannot_hold(hf_dir, vq_dir, tmp_path):
    with pytest.raises(ConfigError, match="multiple of 32"):  # 48² = 3×3 codes: 1.5 patches
        convert_from_hf(hf_dir, tmp_path / "a", image_tokenizer=vq_dir, text_tokenizer="bytes", image_size=48)
    moved = write_standin_tokenizer(tmp_path / "moved.json", **{"<reserved08706>": 8711})
    with pytest.raises(ConfigError, match="<reserved08706>: 8711"):
        convert_from_hf(hf_dir, tmp_path / "b", image_tokenizer=vq_dir, text_tokenizer=str(moved))
    swapped = write_standin_tokenizer(tmp_path / "swapped.json", **{_image_name(0): 5, _image_name(1): 4})
    with pytest.raises(ConfigError, match="image code 0: id 5"):
        convert_from_hf(hf_dir, tmp_path / "c", image_tokenizer=vq_dir, text_tokenizer=str(swapped))
    assert not any((tmp_path / n).exists() for n in "abc")
