"""Losses of the method: AaSM, BCR, Instance Equilibrium and their per-iteration total.

`losses.reference` defines them plainly with autograd; `losses.aasm`, `losses.bcr` and `losses.pairs`
compute the same terms fused, with a written-out gradient.
"""
from losses.equilibrium import InstanceEquilibrium, should_refresh
from losses.pairs import bidirectional_terms, pair_terms, pairwise_terms
from losses.reference import nonzero_mean
from losses.total import total_loss

__all__ = ["nonzero_mean", "InstanceEquilibrium", "should_refresh", "bidirectional_terms", "pair_terms",
           "pairwise_terms", "total_loss"]
