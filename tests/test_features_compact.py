"""The compact features cache (.npz): the same arrays as the released format, read without pickle; bad files
are one-line errors."""
import numpy as np
import pytest
import torch

from evaluation.features import FeaturesError, read_features, save_features_file

KEYS = ["id10001/v1/00001.wav", "id10001/v1/00002.wav", "A.J._Buckley/00000001.jpg"]


def write_both(tmp_path):
    embeddings = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    source = {"checkpoint": "/x/checkpoint_best.pth.tar", "config": {"models": {"layers": [1, 2]}}}
    paths = [str(tmp_path / "features.npz"), str(tmp_path / "features.pt")]
    for path in paths:
        save_features_file(path, KEYS, embeddings, [0, 0, 1], ["m", "m", "f"], source)
    return paths, embeddings, source


def test_compact_and_released_read_as_the_same_arrays(tmp_path):
    (compact, released), embeddings, source = write_both(tmp_path)
    assert "name2feat" in torch.load(released, weights_only=True)  # a .pt path keeps the released format
    with np.load(compact, allow_pickle=False) as data:
        assert data["keys"].tolist() == KEYS and data["genders"].tolist() == ["m", "m", "f"]
    a, b = read_features(compact), read_features(released)
    assert a.name2row == b.name2row == dict(zip(KEYS, range(3)))
    assert np.array_equal(a.embeddings, embeddings.numpy()) and np.array_equal(a.embeddings, b.embeddings)
    assert a.ids.tolist() == b.ids.tolist() == [0, 0, 1] and a.source == b.source == source


@pytest.mark.parametrize("content", [b"not a zip", b""])
def test_unreadable_compact_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "features.npz"
    path.write_bytes(content)
    with pytest.raises(FeaturesError, match="not a readable compact features file") as error:
        read_features(str(path))
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_compact_file_with_mismatched_arrays_is_named(tmp_path):
    path = str(tmp_path / "features.npz")
    np.savez(path, keys=np.array(KEYS), embeddings=np.zeros((2, 4), np.float32), ids=np.zeros(3, np.int64),
             genders=np.array(["m"] * 3), source=np.array("{}"))
    with pytest.raises(FeaturesError, match="malformed compact features file"):
        read_features(path)
    np.savez(path, keys=np.array(KEYS))
    with pytest.raises(FeaturesError, match=r"lacks \['embeddings', 'genders', 'ids', 'source'\]"):
        read_features(path)


def test_compact_file_with_a_non_finite_embedding_is_named(tmp_path):
    path = str(tmp_path / "nan.npz")
    embeddings = torch.ones(3, 4)
    embeddings[1, 2] = float("nan")
    save_features_file(path, ["a.wav", "b.wav", "c.jpg"], embeddings, [0, 1, 1], ["m", "f", "f"], {})
    with pytest.raises(FeaturesError, match=r"nan\.npz: the embedding of 'b\.wav' is not finite \(NaN or inf; 1 of 3"):
        read_features(path)
