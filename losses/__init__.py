"""Losses of the method: AaSM, BCR and Instance Equilibrium as one module, and the InfoNCE baseline.

`losses.reference` defines the terms plainly with autograd; `losses.fused` computes the same terms with a
written-out gradient; `losses.archetype_agnostic.ArchetypeAgnosticLoss` is the iteration's loss.
"""
from __future__ import annotations

from losses.archetype_agnostic import ArchetypeAgnosticLoss, InstanceEquilibrium, IterationLoss, LossTerms
from losses.infonce import InfoNCELoss

__all__ = ["ArchetypeAgnosticLoss", "InfoNCELoss", "InstanceEquilibrium", "IterationLoss", "LossTerms",
           "create_loss"]

# The keys of `training` that are the method's hyper-parameters, by their constructor names.
METHOD_KEYS = ("temperature", "bcr_anchor_margin", "bcr_margin", "bcr_hinge", "bcr_weight", "bcr_start_iter",
               "bcr_enabled", "bcr_gradient", "bcr_regauge_margin", "bcr_row_average", "ie_enabled", "ie_start_iter",
               "ie_refresh_iter", "ie_shift", "ie_normalization", "ie_application", "loss_impl")


def create_loss(cfg_training, num_identities: int) -> InstanceEquilibrium:
    """The loss `training.objective` names, with its hyper-parameters from `cfg_training`."""
    schedule = dict(ie_start_iter=cfg_training.ie_start_iter, ie_refresh_iter=cfg_training.ie_refresh_iter)
    if cfg_training.objective == "infonce":
        return InfoNCELoss(num_identities, temperature=cfg_training.infonce_temperature, **schedule)
    return ArchetypeAgnosticLoss(num_identities, **{key: cfg_training[key] for key in METHOD_KEYS})
