import pytest
import torch

from lab6 import labels as L
from lab6.errors import Lab6Error, LabelError


def test_vocabulary_order():
    assert len(L.OBJECTS) == L.NUM_CLASSES == 24
    assert L.OBJECTS[:8] == tuple(f"{c} cube" for c in L.COLOURS)
    assert L.OBJECTS[8] == "gray sphere" and L.OBJECTS[16] == "gray cylinder" and L.OBJECTS[23] == "yellow cylinder"
    assert L.OBJECT_TO_INDEX["red sphere"] == 9
    assert [L.colour_of(i) for i in (0, 9, 23)] == ["gray", "red", "yellow"]
    assert [L.shape_of(i) for i in (7, 8, 16)] == ["cube", "sphere", "cylinder"]


def test_encode_decode_round_trip():
    sets = [["red sphere", "cyan cylinder", "cyan cube"], ["gray cube"], ["yellow cylinder", "blue sphere"]]
    y = L.encode_batch(sets)
    assert y.shape == (3, 24) and y.dtype == torch.float32
    assert y.sum(1).tolist() == [3.0, 1.0, 2.0]
    for s, row in zip(sets, L.decode(y)):
        assert sorted(row) == sorted(s)
    assert L.decode(L.encode(["gray cube"])) == ["gray cube"]


@pytest.mark.parametrize("bad, message", [
    (["red spher"], "unknown object 'red spher'; did you mean 'red sphere'"),
    (["pink cube"], "unknown object 'pink cube'"),
    (["red cube", "red cube"], "duplicate object 'red cube'"),
    ([], "empty label set"),
    (["red cube", 3], "expected an object name (string), got 3"),
    (["red cube", "blue cube", "green cube", "brown cube"], "4 objects, at most 3"),
    ("red cube", "expected a list of object names"),
])
def test_encode_errors(bad, message):
    with pytest.raises(LabelError) as info:
        L.encode(bad, where="sets.json: entry 5")
    assert message in str(info.value)
    assert str(info.value).startswith("sets.json: entry 5")
    assert isinstance(info.value, Lab6Error) and "\n" not in str(info.value)


def test_encode_batch_names_the_entry():
    with pytest.raises(LabelError, match=r"label sets\[1\]\[0\]: unknown object"):
        L.encode_batch([["red cube"], ["red cubee"]])
    with pytest.raises(LabelError, match="no label sets"):
        L.encode_batch([])


def test_max_objects_is_configurable():
    assert L.encode(["red cube", "blue cube", "green cube", "brown cube"], max_objects=5).sum() == 4


def test_decode_rejects_wrong_width():
    with pytest.raises(LabelError, match="last dimension of 24"):
        L.decode(torch.zeros(5))
