"""Row-wise evaluation whose result for a row does not depend on the batch around it.

Why: the backend scores a task alone (/predict, new tasks) and inside whole pools, and both must
give the same score to the bit (a calibrated score amplifies tiny differences, and a ranking must
not change with how a pool was chunked). BLAS libraries pick their kernels by matrix shape: on
Intel CPUs a single row goes through a matrix-vector kernel whose summation order differs from
the matrix-matrix kernel of a larger batch (1-ulp differences; AMD CPUs happened to agree). So
every batch is zero-padded to exactly ``block`` rows: every row goes through the same kernel of
the same shape, whatever the batch size. A GEMM kernel reduces each output row over the same
inner dimension in the same order wherever the row sits in its block.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

DEFAULT_BLOCK = 512  # rows per padded block: a single row then costs a 512-row matmul, still ~0.1 ms


@torch.no_grad()
def apply_rowwise(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray,
                  block: int = DEFAULT_BLOCK) -> np.ndarray:
    """``fn`` applied to the rows of ``x`` (N, D) float32 in zero-padded blocks of ``block`` rows.

    ``fn`` must be row-wise (row i of its output depends only on row i of its input) and return
    a tensor whose first dimension is the block (any trailing shape). Returns (N, ...) as numpy."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, features), got shape {x.shape}")
    padded = torch.zeros(block, x.shape[1], dtype=torch.float32)
    parts = []
    for i in range(0, len(x), block):
        rows = min(block, len(x) - i)
        padded.zero_()
        padded[:rows] = torch.from_numpy(x[i:i + rows])
        parts.append(fn(padded)[:rows].numpy().copy())
    if not parts:  # an empty batch: the output's trailing shape comes from one padded block
        return fn(padded)[:0].numpy().copy()
    return np.concatenate(parts)
