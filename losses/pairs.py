"""Per-row terms of pairs of embedding batches, fused: AaSM, BCR and correct-ranking counts in both directions."""
from __future__ import annotations

from typing import Sequence

import torch

from losses.aasm import aasm_gradient, aasm_term, positive_cosines
from losses.bcr import bcr_gradient, bcr_term
from losses.reference import CROSS_MODAL_OFFSET, INTRA_MODAL_OFFSET, combine_directions

Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
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
                m_l: float, hinge: bool):
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
            outputs.append((aasm, bcr_term(anchor_cosines, candidate_cosines, m_u=m_u, m_l=m_l, hinge=hinge)))
            saved.append((anchor_cosines, candidate_cosines, anchor_norms, aasm_saved))
        correct = correct_rankings(cosines)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(correct)
        ctx.units, ctx.norms, ctx.pair_units, ctx.saved = units, norms, (x_units, y_units), saved
        ctx.pairs, ctx.options = (x_index, y_index), dict(temp=temp, m_u=m_u, m_l=m_l, hinge=hinge)
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
                    m_l=options["m_l"], hinge=options["hinge"])
                grad = grad_bcr_cosines if grad is None else grad.add_(grad_bcr_cosines)
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
        return grad_embeddings, None, None, None, None, None, None


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
                   m_l: float, hinge: bool) -> Terms:
    """(ℓ, b) of both directions (each 2×P×B: direction × pair × row) and k¹ (P×B) of the pairs
    (X, Y) = (embeddings[x], embeddings[y]) for (x, y) in `pairs`.

    `embeddings` is K×B×D, row i of every batch from identity i; `cross` holds one flag per pair.
    """
    return DirectionTerms.apply(embeddings, tuple(pairs), offsets(cross), temp, m_u, m_l, hinge)


def pair_terms(anchors: torch.Tensor, candidates: torch.Tensor, *, cross: bool, temp: float, m_u: float,
               m_l: float, hinge: bool) -> Terms:
    """(ℓ_i, b_i, k_i) for anchors P and candidates Q (B×D; row i of both = identity i), each (B).

    ℓ and b are float, k (the correct-ranking count, out of B − 1) is an integer tensor.
    """
    aasm, bcr, correct = pairwise_terms(torch.stack([candidates, anchors]), [(0, 1)], cross=[cross], temp=temp,
                                        m_u=m_u, m_l=m_l, hinge=hinge)
    return aasm[0, 0], bcr[0, 0], correct[0]


def combined_terms(embeddings: torch.Tensor, pairs: Pairs, *, cross: Sequence[bool], temp: float, m_u: float,
                   m_l: float, hinge: bool) -> Terms:
    """(AaSM, BCR, k) per row of each pair, both directions combined (P×B): `losses.reference.combined_terms`, fused."""
    return combine_directions(*pairwise_terms(embeddings, pairs, cross=cross, temp=temp, m_u=m_u, m_l=m_l,
                                              hinge=hinge))


def bidirectional_terms(x: torch.Tensor, y: torch.Tensor, *, cross: bool | Sequence[bool], temp: float,
                        m_u: float, m_l: float, hinge: bool) -> Terms:
    """Per-row terms of the pair (X, Y) (B×D): direction 1 has anchors Y, candidates X; direction 2 the reverse.

    Several pairs stacked as P×B×D take one `cross` flag each and give P×B terms.
    """
    stacked = x.dim() == 3
    xs, ys = (x, y) if stacked else (x[None], y[None])
    count = xs.shape[0]
    combined = combined_terms(torch.cat([xs, ys]), [(p, count + p) for p in range(count)],
                              cross=list(cross) if stacked else [cross], temp=temp, m_u=m_u, m_l=m_l, hinge=hinge)
    return combined if stacked else tuple(term[0] for term in combined)
