"""Losses of the method: AaSM, BCR, Instance Equilibrium and their per-iteration total."""
from losses.aasm import aasm_term
from losses.bcr import bcr_term, nonzero_mean
from losses.equilibrium import InstanceEquilibrium, should_refresh
from losses.pairs import bidirectional_terms, pair_terms, pairwise_terms
from losses.total import total_loss

__all__ = ["aasm_term", "bcr_term", "nonzero_mean", "InstanceEquilibrium", "should_refresh",
           "bidirectional_terms", "pair_terms", "pairwise_terms", "total_loss"]
