"""Character LM: data helpers, sampling, state carrying, and that training learns."""
import numpy as np
import pytest

from gpurnn.apps.charlm import CharLM, LMConfig, Trainer, sample
from gpurnn.layers import make_layer
from gpurnn.train.data import TextError, Vocabulary, as_streams, default_corpus, load_text, one_hot, split_train_val

SENTENCES = ["the cat sat on the mat. ", "a dog ran in the park. ", "we like green tea. ",
             "birds sing at dawn. ", "the sun is warm today. "]


def structured_text(n_sentences, seed):
    """English-like text with structure an RNN can learn fast: a few fixed sentences in
    random order (next characters are predictable inside a sentence, not between)."""
    rng = np.random.default_rng(seed)
    return "".join(SENTENCES[i] for i in rng.integers(0, len(SENTENCES), n_sentences))


def test_short_training_run_falls_far_below_unigram_entropy():
    text = structured_text(300, seed=0)
    trainer = Trainer(text, LMConfig(cell="lstm", hidden=48, window=24, batch=8, lr=0.01,
                                     backend="numpy", seed=0))
    start = trainer.evaluate("val")
    for _ in range(150):
        trainer.train_step()
    val = trainer.evaluate("val")
    assert start > trainer.unigram_bpc            # an untrained model is worse than unigram
    assert val < 0.5 * trainer.unigram_bpc, (val, trainer.unigram_bpc)
    assert np.mean(trainer.history["train_bpc"][-10:]) < np.mean(trainer.history["train_bpc"][:10])


def test_evaluation_carries_state_across_windows(rng):
    """Scoring in windows that carry the state is the same as one pass over the text."""
    lm = CharLM(6, cell="gru", hidden=8, backend="numpy", dtype="float64", seed=1)
    ids = rng.integers(0, 6, 41)
    one_pass = lm.nll(ids, window=100, batch=1)
    windows = lm.nll(ids, window=7, batch=1)
    assert one_pass[1] == windows[1] == 40
    assert windows[0] == pytest.approx(one_pass[0], rel=1e-12)


def test_sample_uses_the_prime_and_the_vocabulary():
    text = structured_text(40, seed=1)
    vocab = Vocabulary.from_text(text)
    lm = CharLM(len(vocab), hidden=16, backend="numpy", seed=0)
    out = sample(lm, vocab, 50, temperature=1.0, prime="the ", rng=np.random.default_rng(0))
    assert len(out) == 50 and set(out) <= set(vocab.chars)
    greedy = [sample(lm, vocab, 20, temperature=0, prime="the ") for _ in range(2)]
    assert greedy[0] == greedy[1]
    other_prime = sample(lm, vocab, 20, temperature=0, prime="birds ")
    assert other_prime != greedy[0] or len(set(greedy[0])) == 1
    with pytest.raises(TextError, match="prime"):
        sample(lm, vocab, 5, prime="XYZ")


def test_vocabulary_round_trip_and_unknown_characters():
    vocab = Vocabulary.from_text("hello, wörld\n")
    ids = vocab.encode("lol wö")
    assert vocab.decode(ids) == "lol wö"
    assert vocab.chars == sorted(vocab.chars)
    with pytest.raises(TextError, match="'Q'"):
        vocab.encode("Q")


def test_streams_and_split_layout():
    ids = np.arange(23)
    train, val = split_train_val(ids, 0.2)
    assert len(val) == 4 and np.array_equal(np.r_[train, val], ids)
    streams = as_streams(train, 3)
    assert streams.shape == (3, 6) and np.array_equal(streams[1], np.arange(6, 12))
    x = one_hot(np.array([[2, 0]]), 3, np.float32)
    assert x.shape == (1, 2, 3) and x[0, 0].tolist() == [0, 0, 1]


def test_load_text_errors(tmp_path):
    with pytest.raises(TextError, match="no such file"):
        load_text(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(TextError, match="empty"):
        load_text(str(empty))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(TextError, match="not UTF-8"):
        load_text(str(latin))
    with pytest.raises(TextError, match="directory"):
        load_text(str(tmp_path))
    good = tmp_path / "good.txt"
    good.write_text("héllo\n", encoding="utf-8")
    assert load_text(str(good)) == "héllo\n"


def test_window_longer_than_text_is_a_clear_error():
    with pytest.raises(TextError, match="window"):
        Trainer("short text", LMConfig(window=64, hidden=4, backend="numpy"))


def test_short_text_uses_fewer_streams():
    trainer = Trainer("abcdefghij" * 10, LMConfig(window=8, batch=32, hidden=4, backend="numpy"))
    assert 1 <= trainer.batch < 32
    trainer.train_step()


def test_default_corpus_is_real_and_deterministic():
    text, description = default_corpus(max_chars=50_000)
    again, _ = default_corpus(max_chars=50_000)
    assert text == again and len(text) == 50_000
    assert "def " in text and "standard library" in description


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_make_layer_builds_every_cell(cell):
    m = make_layer(cell, 3, 4, backend="numpy")
    out, _ = m(np.zeros((2, 1, 3), np.float32))
    assert out.shape == (2, 1, 4)
    with pytest.raises(ValueError, match="cell"):
        make_layer("transformer", 3, 4)
