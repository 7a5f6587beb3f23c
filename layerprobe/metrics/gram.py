"""Inner products of centred Gram matrices, ⟨MₐMₐᵀ, M_bM_bᵀ⟩, for many matrices at once.

The Gram form of linear CKA needs ⟨K, L⟩, ⟨K, K⟩ and ⟨L, L⟩; a cross-layer map needs ⟨Kᵢ, Lⱼ⟩ for
every pair. Both are computed here block by block: rows are cut into b blocks and for each block
pair p ≤ q the blocks Mₐ[p]Mₐ[q]ᵀ of every matrix are formed once (one product each), then all
pairwise inner products of those blocks come from one small product F Fᵀ. Off-diagonal block pairs
count twice (Gram matrices are symmetric), so the products cost (b+1)/(2b) of full Gram matrices,
and memory stays at m blocks of at most :data:`BLOCK_BYTES` in all, whatever n.
"""

from __future__ import annotations

import math

import torch

__all__ = ["BLOCK_BYTES", "MIN_BLOCK", "gram_inner", "row_blocks"]

#: Memory for the m Gram blocks of one block pair (float64).
BLOCK_BYTES = 1 << 28
#: Smallest block side worth cutting to (smaller products run below full speed).
MIN_BLOCK = 256


def row_blocks(n: int, m: int) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop), ...]`` cutting n rows into blocks whose m Gram blocks fit :data:`BLOCK_BYTES`."""
    cap = max(1, int(math.sqrt(BLOCK_BYTES / 8 / max(m, 1))))
    side = min(cap, max(MIN_BLOCK, -(-n // 8)))
    count = -(-n // min(side, n))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]


def gram_inner(ops: list[torch.Tensor]) -> torch.Tensor:
    """``G[a, b] = ⟨MₐMₐᵀ, M_bM_bᵀ⟩ = ‖MₐᵀM_b‖²_F`` for float64 matrices of equal row count.

    Args:
        ops: m float64 CPU matrices, shapes (n, d_a); normally column-centred.

    Returns:
        float64 tensor of shape (m, m), symmetric.

    >>> import torch
    >>> a, b = torch.randn(700, 5, dtype=torch.float64), torch.randn(700, 3, dtype=torch.float64)
    >>> g = gram_inner([a, b])
    >>> bool(torch.allclose(g[0, 1], torch.linalg.matrix_norm(a.T @ b) ** 2))
    True
    """
    m, n = len(ops), ops[0].shape[0]
    blocks = row_blocks(n, m)
    side = max(e - s for s, e in blocks)
    buf = torch.empty(m, side * side, dtype=torch.float64)
    g = torch.zeros(m, m, dtype=torch.float64)
    for i, (p0, p1) in enumerate(blocks):
        for q0, q1 in blocks[i:]:
            size = (p1 - p0) * (q1 - q0)
            for k, mat in enumerate(ops):
                torch.mm(mat[p0:p1], mat[q0:q1].T, out=buf[k, :size].view(p1 - p0, q1 - q0))
            f = buf[:, :size]
            g.addmm_(f, f.T, alpha=1.0 if p0 == q0 else 2.0)
    return g
