"""AaSM (Archetype-agnostic Subspace Merging), fused: `losses.reference.aasm` on precomputed cosines, with its gradient.

Rows of a cosine matrix are anchors. A direction whose anchors index the columns of a matrix may be
passed as its transposed view: the functions here keep the layout of their input, so a transposed view
is never copied.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

# Shifted exponents are clamped here: a term e^-60 ≈ 1e-26 is far below float32 resolution of a sum
# that is at least 1, and stays out of the subnormal range, whose arithmetic is slow on x86 CPUs.
EXP_FLOOR = -60.0


def positive_cosines(cosines: torch.Tensor) -> torch.Tensor:
    """π_i = S_ii as a …×B×1 column to broadcast over rows.

    Copied out of the diagonal: as a broadcast operand, the diagonal of a transposed view makes
    element-wise kernels several times slower.
    """
    return cosines.diagonal(dim1=-2, dim2=-1).contiguous().unsqueeze(-1)


class AasmSaved(NamedTuple):
    """What the gradient needs: p_ij·e^{ℓ_i − m_i} (…×B×B), e^{m_i − ℓ_i}, Σ_j p_ij (…×B)."""
    exps: torch.Tensor
    inverse_partition: torch.Tensor
    mass: torch.Tensor


def log_rest(offset: float | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """log(c − 1) shaped like the per-row terms (…×B): the part of c not made up by exp(0) for j = i.

    With one c per stacked pair (dimension −2 of `like`) the values are filled in place, so that a
    CUDA tensor is never built from host memory.
    """
    offsets = [offset] if isinstance(offset, (int, float)) else list(offset)
    rest = torch.full_like(like, math.log(offsets[-1] - 1))
    for pair, value in enumerate(offsets[:-1]):
        if value != offsets[-1]:
            rest.select(-2, pair).fill_(math.log(value - 1))
    return rest


def aasm_term(cosines: torch.Tensor, anchor_norms: torch.Tensor, temp: float,
              offset: float | Sequence[float]) -> tuple[torch.Tensor, AasmSaved]:
    """ℓ_i = log(c + Σ_{j≠i} exp((s_ij − s_ii)/τ)), s_ij = ‖p_i‖·S_ij; S …×B×B, ‖p_i‖ …×B → ℓ …×B.

    Written as ℓ_i = log(c − 1 + Σ_j e^{z_ij}) with z_ij = ‖p_i‖(S_ij − S_ii)/τ, whose j = i term is
    exp(0) = 1; the sum is shifted by m_i = max_j z_ij ≥ 0 so that it cannot overflow.
    """
    positives = positive_cosines(cosines)
    row_max = cosines.amax(dim=-1, keepdim=True)
    scale = (anchor_norms / temp).unsqueeze(-1)
    exps = torch.sub(cosines, row_max).mul_(scale).clamp_(min=EXP_FLOOR).exp_()  # e^{z_ij − m_i}
    shift = ((row_max - positives) * scale).squeeze(-1)  # m_i
    row_sums = exps.sum(dim=-1)
    aasm = torch.logaddexp(shift + row_sums.log(), log_rest(offset, row_sums))
    inverse_partition = torch.exp(shift - aasm)  # p_ij = e^{z_ij}/(c − 1 + Σ_j e^{z_ij}) = exps_ij·this
    return aasm, AasmSaved(exps, inverse_partition, row_sums * inverse_partition)


def aasm_gradient(grad: torch.Tensor, saved: AasmSaved, cosines: torch.Tensor, anchor_norms: torch.Tensor,
                  temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """∂L/∂S (…×B×B) and ∂L/∂‖p‖ (…×B) from g = ∂L/∂ℓ:

    ∂S_ij = g_i·‖p_i‖/τ·(p_ij − δ_ij Σ_k p_ik) and ∂‖p_i‖ = g_i/τ·Σ_j p_ij (S_ij − S_ii).
    """
    scale = anchor_norms / temp
    weight = grad * scale
    grad_cosines = saved.exps * (weight * saved.inverse_partition).unsqueeze(-1)
    grad_cosines.diagonal(dim1=-2, dim2=-1).sub_(weight * saved.mass)
    positives = cosines.diagonal(dim1=-2, dim2=-1)
    weighted_cosines = torch.linalg.vecdot(saved.exps, cosines) * saved.inverse_partition
    grad_norms = grad / temp * (weighted_cosines - positives * saved.mass)
    return grad_cosines, grad_norms
