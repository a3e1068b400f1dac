"""The method's per-row terms, fused: AaSM, BCR and correct-ranking counts of pairs of embedding batches,
computed on precomputed cosines with a written-out gradient (`losses.reference` is the plain definition).

Rows of a cosine matrix are anchors. A direction whose anchors index the columns of a matrix may be
passed as its transposed view: the functions here keep the layout of their input, so a transposed view
is never copied. Masks are float 0/1 matrices that enter by multiplication: on the CPU, boolean-mask
kernels (masked_fill, where) run many times slower on unpredictable masks.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from losses.reference import CROSS_MODAL_OFFSET, INTRA_MODAL_OFFSET, Terms, combine_directions

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


# BCR (Bilateral Connection Re-gauging): `losses.reference.bcr` on precomputed cosines.
def raw_scores(cosines: torch.Tensor, positives: torch.Tensor, m_l: float,
               hinge: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """t_ij (…×B×B) from S_ij and π_i (…×B×1), and the circle variant's constant scales a⁻_ij, a⁺_i (else None)."""
    if hinge:
        return cosines - (positives - m_l), None, None
    scale_positive = torch.relu(1 + m_l - positives)
    scale_negative = torch.relu(cosines + m_l)
    return scale_negative * (cosines - m_l) - scale_positive * (positives - (1 - m_l)), scale_negative, scale_positive


def greater(values: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """[v > threshold] as a float 0/1 tensor, in the layout of `values` (one pass; a bool result would
    need a second pass to convert)."""
    return torch.gt(values, threshold, out=torch.empty_like(values))


def loose_mask(raw: torch.Tensor) -> torch.Tensor:
    """σ_ij = [t_ij > 0] for j ≠ i."""
    loose = greater(raw, 0.0)
    loose.diagonal(dim1=-2, dim2=-1).zero_()
    return loose


def bcr_term(cosines: torch.Tensor, candidate_cosines: torch.Tensor, *, m_u: float, m_l: float,
             hinge: bool, regauge_margin: float) -> torch.Tensor:
    """b_i (…×B) from S_ij = cos(p_i, q_j) and C_ij = cos(q_i, q_j) (…×B×B).

    t_ij: hinge S_ij − π_i + m_l, or the circle variant a⁻_ij(S_ij − m_l) − a⁺_i(π_i − (1 − m_l)) with
    constant scales; σ_ij = [t_ij > 0] (j ≠ i); T_ij = σ_ij(t_ij + [C_ij + g − π_i]₊ + [S_ij − C_ij + g]₊);
    b_i = [π_i > m_u] · Σ_j T_ij / Σ_j σ_ij. T_ij > 0 exactly where σ_ij = 1, so this is the mean of
    the non-zero entries of row i of T.
    """
    positives = positive_cosines(cosines)
    raw, _, _ = raw_scores(cosines, positives, m_l, hinge)
    loose = loose_mask(raw)
    work = (candidate_cosines - (positives - regauge_margin)).relu_()
    raw.add_(work).add_(torch.sub(cosines, candidate_cosines, out=work).add_(regauge_margin).relu_())
    return raw.mul_(loose).sum(dim=-1) * (positives.squeeze(-1) > m_u) / loose.sum(dim=-1).clamp(min=1)


def bcr_gradient(grad: torch.Tensor, cosines: torch.Tensor, candidate_cosines: torch.Tensor, *, m_u: float,
                 m_l: float, hinge: bool, regauge_margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """∂L/∂S and ∂L/∂C (…×B×B) from g = ∂L/∂b, with w_i = g_i·[π_i > m_u]/Σ_j σ_ij:

    ∂S_ij = w_i σ_ij(a⁻_ij + [S_ij − C_ij + g > 0]), ∂C_ij = w_i σ_ij([C_ij + g − π_i > 0] − [S_ij − C_ij + g > 0]),
    ∂π_i = −w_i Σ_j σ_ij(a⁺_i + [C_ij + g − π_i > 0]); a⁺ = a⁻ = 1 for the hinge variant. σ and the
    hinge masks are recomputed rather than kept from the forward pass: that keeps four B×B tensors per
    direction out of memory, and out of the forward pass when BCR is detached.
    """
    positives = positive_cosines(cosines)
    raw, scale_negative, scale_positive = raw_scores(cosines, positives, m_l, hinge)
    loose = loose_mask(raw)
    counts = loose.sum(dim=-1, keepdim=True)
    weights = grad.unsqueeze(-1) * (positives > m_u) / counts.clamp(min=1)
    candidate_active = greater(candidate_cosines, positives - regauge_margin).mul_(loose)
    cross_active = torch.gt(torch.sub(cosines, candidate_cosines, out=raw), -regauge_margin, out=raw).mul_(loose)
    slopes = counts if scale_positive is None else counts * scale_positive
    grad_positives = -weights * (slopes + candidate_active.sum(dim=-1, keepdim=True))
    grad_candidates = candidate_active.sub_(cross_active).mul_(weights)
    if scale_negative is None:
        grad_cosines = cross_active.add_(loose)
    else:
        grad_cosines = cross_active.addcmul_(loose, scale_negative)
    grad_cosines.mul_(weights).diagonal(dim1=-2, dim2=-1).add_(grad_positives.squeeze(-1))
    return grad_cosines, grad_candidates


# Both directions of several pairs at once.
Pairs = Sequence[tuple[int, int]]


def correct_rankings(cosines: torch.Tensor) -> torch.Tensor:
    """k_i = #{j ≠ i : S_ij < π_i} (…×B, integer); the diagonal never counts (S_ii = π_i)."""
    return torch.lt(cosines, positive_cosines(cosines), out=torch.empty_like(cosines)).sum(-1).long()


def offsets(cross: Sequence[bool]) -> list[float]:
    """AaSM's c of each pair: cross-modal or intra-modal."""
    return [CROSS_MODAL_OFFSET if flag else INTRA_MODAL_OFFSET for flag in cross]


# Up to this batch size both directions go through one batched call on [S; Sᵀ], as operator overhead
# dominates; above it, two calls on S and its transposed view cost less than copying Sᵀ.
BATCH_DIRECTIONS_UP_TO = 64


class DirectionTerms(torch.autograd.Function):
    """(ℓ, b), each 2×P×B (direction × pair × row), and k¹ (P×B) of pairs (X, Y) of embedding batches.

    Direction 1 has anchors Y and candidates X, direction 2 the reverse. Both read one cosine matrix
    S = Ŷ X̂ᵀ (direction 2 its transpose) and the Gram matrices X̂ X̂ᵀ, Ŷ Ŷᵀ, each computed once per
    embedding batch even when several pairs share it. The gradient is written out: it needs one
    product per Gram matrix and keeps a handful of B×B tensors, where autograd needs two and dozens.
    """

    @staticmethod
    def forward(ctx, embeddings: torch.Tensor, pairs: Pairs, offset: list[float], temp: float, m_u: float,
                m_l: float, hinge: bool, regauge_margin: float, candidate_gradient: bool):
        norms = torch.linalg.vector_norm(embeddings, dim=-1)
        units = embeddings / norms.clamp_min(1e-12).unsqueeze(-1)  # F.normalize
        x_index, y_index = [x for x, _ in pairs], [y for _, y in pairs]
        x_units, y_units = torch.stack([units[k] for k in x_index]), torch.stack([units[k] for k in y_index])
        cosines = y_units @ x_units.mT
        grams = units @ units.mT
        x_grams, y_grams = torch.stack([grams[k] for k in x_index]), torch.stack([grams[k] for k in y_index])
        x_norms, y_norms = torch.stack([norms[k] for k in x_index]), torch.stack([norms[k] for k in y_index])
        if cosines.shape[-1] <= BATCH_DIRECTIONS_UP_TO:
            groups = [(torch.cat([cosines, cosines.mT]), torch.cat([x_grams, y_grams]), torch.cat([y_norms, x_norms]),
                       offset + offset)]
        else:
            groups = [(cosines, x_grams, y_norms, offset), (cosines.mT, y_grams.mT, x_norms, offset)]
        outputs, saved = [], []
        for anchor_cosines, candidate_cosines, anchor_norms, group_offset in groups:
            aasm, aasm_saved = aasm_term(anchor_cosines, anchor_norms, temp, group_offset)
            outputs.append((aasm, bcr_term(anchor_cosines, candidate_cosines, m_u=m_u, m_l=m_l, hinge=hinge,
                                           regauge_margin=regauge_margin)))
            saved.append((anchor_cosines, candidate_cosines, anchor_norms, aasm_saved))
        correct = correct_rankings(cosines)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(correct)
        ctx.units, ctx.norms, ctx.pair_units, ctx.saved = units, norms, (x_units, y_units), saved
        ctx.pairs, ctx.candidate_gradient = (x_index, y_index), candidate_gradient
        ctx.options = dict(temp=temp, m_u=m_u, m_l=m_l, hinge=hinge, regauge_margin=regauge_margin)
        shape = (2, len(pairs), cosines.shape[-1])
        aasm, bcr = (torch.cat(terms).view(shape) for terms in zip(*outputs))
        return aasm, bcr, correct

    @staticmethod
    def backward(ctx, grad_aasm, grad_bcr, _):
        units, norms, (x_units, y_units), (x_index, y_index) = ctx.units, ctx.norms, ctx.pair_units, ctx.pairs
        count = len(x_index)
        groups = len(ctx.saved)
        grad_cosines, grad_candidates, grad_anchor_norms = [], [], []
        options = ctx.options
        for group, (anchor_cosines, candidate_cosines, anchor_norms, aasm_saved) in enumerate(ctx.saved):
            rows = slice(None) if groups == 1 else slice(group * count, (group + 1) * count)
            grad = None
            if grad_aasm is not None:
                grad, grad_norms = aasm_gradient(grad_aasm.flatten(0, 1)[rows], aasm_saved, anchor_cosines,
                                                 anchor_norms, options["temp"])
                grad_anchor_norms.append(grad_norms)
            if grad_bcr is not None:
                grad_bcr_cosines, grad_candidate_cosines = bcr_gradient(
                    grad_bcr.flatten(0, 1)[rows], anchor_cosines, candidate_cosines, m_u=options["m_u"],
                    m_l=options["m_l"], hinge=options["hinge"], regauge_margin=options["regauge_margin"])
                grad = grad_bcr_cosines if grad is None else grad.add_(grad_bcr_cosines)
                if ctx.candidate_gradient:
                    grad_candidates.append(grad_candidate_cosines)
            grad_cosines.append(grad)
        direction_grads = {name: split_directions(grads, count)
                           for name, grads in [("cosines", grad_cosines), ("candidates", grad_candidates),
                                               ("norms", grad_anchor_norms)] if grads and grads[0] is not None}
        batches = units.shape[0]
        grad_norms = (add_by_batch(*direction_grads["norms"], y_index, x_index, batches)
                      if "norms" in direction_grads else torch.zeros_like(norms))
        if "cosines" in direction_grads:  # S = Ŷ X̂ᵀ: ∂Ŷ = ∂S X̂, ∂X̂ = ∂Sᵀ Ŷ
            first, second = direction_grads["cosines"]
            grad_s = first.add_(second.mT)
            grad_units = add_by_batch(grad_s @ x_units, grad_s.mT @ y_units, y_index, x_index, batches)
        else:
            grad_units = torch.zeros_like(units)
        if "candidates" in direction_grads:  # C = Û Ûᵀ: ∂Û = (∂C + ∂Cᵀ) Û; only ∂C + ∂Cᵀ matters
            first, second = direction_grads["candidates"]
            # Either orientation of a Gram gradient will do: take the contiguous one.
            grad_grams = add_by_batch(first, second if groups == 1 else second.mT, x_index, y_index, batches)
            grad_units.baddbmm_(grad_grams + grad_grams.mT, units)
        # û = e/‖e‖: ∂e = (∂û − û⟨û, ∂û⟩)/‖e‖ + ∂‖e‖·û
        lengths = norms.clamp_min(1e-12)
        radial = torch.linalg.vecdot(units, grad_units) - grad_norms * lengths
        grad_embeddings = grad_units.sub_(units * radial.unsqueeze(-1)).div_(lengths.unsqueeze(-1))
        return grad_embeddings, None, None, None, None, None, None, None, None


def add_by_batch(first: torch.Tensor, second: torch.Tensor, first_index: list[int], second_index: list[int],
                 batches: int) -> torch.Tensor:
    """batches×…: row k the sum of the rows of `first` and `second` (P×…, one per pair) that belong to batch k."""
    sums: list[torch.Tensor | None] = [None] * batches
    for k, part in zip(first_index + second_index, [*first.unbind(0), *second.unbind(0)]):
        sums[k] = part if sums[k] is None else sums[k] + part
    zeros = torch.zeros_like(first[0])
    return torch.stack([zeros if total is None else total for total in sums])


def split_directions(grads: list[torch.Tensor], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A gradient of both directions, as one batched group (2P×…) or two groups (P×… each), as (first, second)."""
    return (grads[0][:count], grads[0][count:]) if len(grads) == 1 else (grads[0], grads[1])


def pairwise_terms(embeddings: torch.Tensor, pairs: Pairs, *, cross: Sequence[bool], temp: float, m_u: float,
                   m_l: float, hinge: bool, regauge_margin: float, candidate_gradient: bool = True) -> Terms:
    """(ℓ, b) of both directions (each 2×P×B: direction × pair × row) and k¹ (P×B) of the pairs
    (X, Y) = (embeddings[x], embeddings[y]) for (x, y) in `pairs`.

    `embeddings` is K×B×D, row i of every batch from identity i; `cross` holds one flag per pair;
    BCR's options as in `losses.reference.bcr`.
    """
    return DirectionTerms.apply(embeddings, tuple(pairs), offsets(cross), temp, m_u, m_l, hinge, regauge_margin,
                                candidate_gradient)


def pair_terms(anchors: torch.Tensor, candidates: torch.Tensor, *, cross: bool, **options) -> Terms:
    """(ℓ_i, b_i, k_i) for anchors P and candidates Q (B×D; row i of both = identity i), each (B).

    ℓ and b are float, k (the correct-ranking count, out of B − 1) is an integer tensor; `options` those
    of `pairwise_terms`.
    """
    aasm, bcr, correct = pairwise_terms(torch.stack([candidates, anchors]), [(0, 1)], cross=[cross], **options)
    return aasm[0, 0], bcr[0, 0], correct[0]


def combined_terms(embeddings: torch.Tensor, pairs: Pairs, *, cross: Sequence[bool], **options) -> Terms:
    """(AaSM, BCR, k) per row of each pair, both directions combined (P×B): `losses.reference.combined_terms`,
    fused; `options` those of `pairwise_terms`."""
    return combine_directions(*pairwise_terms(embeddings, pairs, cross=cross, **options))


def bidirectional_terms(x: torch.Tensor, y: torch.Tensor, *, cross: bool | Sequence[bool], **options) -> Terms:
    """Per-row terms of the pair (X, Y) (B×D): direction 1 has anchors Y, candidates X; direction 2 the reverse.

    Several pairs stacked as P×B×D take one `cross` flag each and give P×B terms.
    """
    stacked = x.dim() == 3
    xs, ys = (x, y) if stacked else (x[None], y[None])
    count = xs.shape[0]
    combined = combined_terms(torch.cat([xs, ys]), [(p, count + p) for p in range(count)],
                              cross=list(cross) if stacked else [cross], **options)
    return combined if stacked else tuple(term[0] for term in combined)
