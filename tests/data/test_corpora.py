"""The byte corpus and the label-proportion bags: shapes, determinism, bad arguments."""
import pytest
import torch

from pyaudiok.data.label_proportions import make_bags
from pyaudiok.data.text_corpus import ByteCorpus


def test_byte_corpus_windows_and_bad_arguments():
    corpus = ByteCorpus(bytes(range(256)) * 4, valid_fraction=0.25)
    batch = corpus.batch(16, 3, seed=0, step=5)
    assert batch.shape == (3, 16) and batch.dtype == torch.int64
    assert torch.equal(batch, corpus.batch(16, 3, seed=0, step=5))
    assert all(torch.equal(row, (row[0] + torch.arange(16)) % 256) for row in batch)  # contiguous windows
    assert corpus.batch(8, 0, seed=0, step=0).shape == (0, 8)
    assert corpus.valid_windows(8, 0).shape == (0, 8)
    assert ByteCorpus(b"").unigram_entropy() == 0
    with pytest.raises(ValueError, match="length"):
        corpus.batch(0, 3, seed=0, step=0)
    with pytest.raises(ValueError, match="valid_fraction"):
        ByteCorpus(b"abc", valid_fraction=1.5)
    with pytest.raises(ValueError, match="split"):
        corpus.unigram_entropy("test")


def test_bags_reject_labels_outside_the_classes():
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2])
    bags = make_bags(labels, 3, 3, seed=1)
    assert bags.sizes.tolist() == [3, 3, 1] and torch.allclose(bags.proportions.sum(1), torch.ones(3))
    # -1 used to be counted as the last class
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        make_bags(torch.tensor([-1, 0]), 2, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        make_bags(labels, 3, 2)
    with pytest.raises(ValueError, match="1-D integer"):
        make_bags(labels.float(), 3, 3)
    with pytest.raises(TypeError, match="bag_size must be an int; got float 1.5"):
        make_bags(labels, 1.5, 3)
