import pytest

from worldvla.errors import DataError
from worldvla.tokenizers.text import ByteTokenizer, HFTokenizer, load_text_tokenizer


def test_byte_tokenizer_round_trip():
    t = ByteTokenizer()
    ids = t.encode("pick up the café mug")
    assert all(0 <= i < t.size for i in ids)
    assert t.decode(ids) == "pick up the café mug"


def test_hf_tokenizer_adapter_from_a_json_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["open the drawer", "close the door", "push the button"] * 20,
        trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>"]),
    )
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    hf = load_text_tokenizer(str(path))
    assert isinstance(hf, HFTokenizer) and hf.size == tok.get_vocab_size()
    ids = hf.encode("open the door")
    assert ids and all(0 <= i < hf.size for i in ids)
    assert hf.decode(ids).replace(" ", "") == "openthedoor"
    assert hf.fingerprint() != ByteTokenizer().fingerprint()


def test_bad_tokenizer_file_is_a_clear_error(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        HFTokenizer(p)
