import numpy as np
import pytest
import torch

from mcm_core.rowwise import apply_rowwise


def test_rows_are_padded_to_one_block_shape_whatever_the_batch():
    """fn only ever sees tensors of exactly `block` rows, and returns the real rows in order."""
    shapes = []

    def fn(b):
        shapes.append(tuple(b.shape))
        return b * 2 + 1

    x = np.arange(21, dtype=np.float32).reshape(7, 3)
    out = apply_rowwise(fn, x, block=4)
    assert shapes == [(4, 3), (4, 3)]
    assert np.array_equal(out, x * 2 + 1) and out.dtype == np.float32


def test_a_matmul_row_does_not_depend_on_its_batch():
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(size=(300, 7)).astype(np.float32))
    x = rng.normal(size=(1000, 300)).astype(np.float32)
    whole = apply_rowwise(lambda b: b @ w, x)
    for size in (1, 2, 3, 511, 513):
        picked = rng.choice(len(x), size=size, replace=False)
        assert np.array_equal(apply_rowwise(lambda b: b @ w, x[picked]), whole[picked]), size


def test_trailing_shape_and_empty_batch():
    x = np.ones((0, 4), np.float32)
    assert apply_rowwise(lambda b: b.reshape(len(b), 2, 2), x).shape == (0, 2, 2)
    assert apply_rowwise(lambda b: b.reshape(len(b), 2, 2), np.ones((3, 4), np.float32)).shape == (3, 2, 2)
    with pytest.raises(ValueError, match="2-D"):
        apply_rowwise(lambda b: b, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="block"):
        apply_rowwise(lambda b: b, x, block=0)
