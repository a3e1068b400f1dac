"""Where an identity's files are, whichever way a download names its folders, and keys in either form.

VoxCeleb1's audio folders are named by VoxCeleb1 ID today (`id10117/<video>/00001.wav`) and were named
by the VGGFace name in its first release (`CCH_Pounder/...`); faces are named by the VGGFace name.
The folder of each identity is found by either name, and the stores key every file in one form:
clips by VoxCeleb1 ID, faces by VGGFace name, the form of the public lists. A list written in the
other form (clips by name, say) resolves through the meta file: the first path part of a key is
swapped between an identity's two names.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from data.splits import Identity

VOICE, FACE = "voice", "face"


def store_name(identity: Identity, modality: str) -> str:
    """The first path part of an identity's keys in the stores."""
    return identity.vox_id if modality == VOICE else identity.vgg_id


def other_name(identity: Identity, modality: str) -> str:
    """The identity's name a folder of this modality may also have."""
    return identity.vgg_id if modality == VOICE else identity.vox_id


def identity_folder(root: str, identity: Identity, modality: str) -> str | None:
    """The name of the identity's folder under root: the store's form first, then the other name."""
    names = (store_name(identity, modality), other_name(identity, modality))
    return next((n for n in names if os.path.isdir(os.path.join(root, n))), None)


def as_store_keys(disk_keys: Sequence[str], folder: str, identity: Identity, modality: str) -> list[str]:
    """Keys `folder/...` found on disk, renamed to the store's form of the identity."""
    name = store_name(identity, modality)
    return list(disk_keys) if folder == name else [name + k[len(folder):] for k in disk_keys]


def swap_names(keys: Iterable[str], identities: list[Identity]) -> np.ndarray:
    """Each key with its first path part swapped between the identity's VoxCeleb1 ID and VGGFace name
    (keys whose first part names no identity are returned as they are)."""
    keys = np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys, dtype=str)
    if not len(keys) or not identities:
        return keys
    names = np.array([i.vox_id for i in identities] + [i.vgg_id for i in identities], dtype=str)
    swapped = np.array([i.vgg_id for i in identities] + [i.vox_id for i in identities], dtype=str)
    order = np.argsort(names, kind="stable")
    names, swapped = names[order], swapped[order]
    head, slash, rest = np.strings.partition(keys, "/")
    at = np.minimum(np.searchsorted(names, head), len(names) - 1)
    found = names[at] == head
    return np.where(found, np.strings.add(np.strings.add(swapped[at], slash), rest), keys)


def resolve_keys(keys: Iterable[str], known: Iterable[str], identities: list[Identity]) -> np.ndarray:
    """Keys as `known` (a store's keys) holds them: a key it lacks is replaced by its other form when
    that one is known; anything else is returned as it is (the caller reports it missing)."""
    keys = np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys, dtype=str)
    known = np.asarray(list(known) if not isinstance(known, np.ndarray) else known, dtype=str)
    if not len(keys):
        return keys
    present = np.isin(keys, known)
    if present.all():
        return keys
    other = swap_names(keys, identities)
    return np.where(~present & np.isin(other, known), other, keys)


def resolve_rows(rows: np.ndarray | list[np.ndarray], known: Iterable[str], identities: list[Identity]
                 ) -> np.ndarray | list[np.ndarray]:
    """`resolve_keys` over a list's keys as read: a (lines, columns) table or [queries, gallery]."""
    known = np.asarray(list(known) if not isinstance(known, np.ndarray) else known, dtype=str)
    if isinstance(rows, np.ndarray):
        return resolve_keys(rows.ravel(), known, identities).reshape(rows.shape)
    return [resolve_keys(r, known, identities) for r in rows]
