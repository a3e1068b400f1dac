"""Which files of each identity a run can use: the scans of the identity folders that the split rule,
the stores (data.prepare) and the report (data.check) all read."""
from __future__ import annotations

import os

from easydict import EasyDict
from tqdm import tqdm

from data.layout import FACE, VOICE, identity_folder
from data.lists import unlistable_reason
from data.splits import Identity

AUDIO_EXTENSIONS = (".wav",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
EXTENSIONS = {VOICE: AUDIO_EXTENSIONS, FACE: IMAGE_EXTENSIONS}
ROOT_KEYS = {VOICE: "dataset.audio_data_dir", FACE: "dataset.image_data_dir"}


def scan(root: str, folder: str, extensions: tuple[str, ...]) -> list[str] | None:
    """Sorted keys `folder/.../file` of the files under root/folder, or None if the folder is missing."""
    top = os.path.join(root, folder)
    if not os.path.isdir(top):
        return None
    keys = []
    for here, dirs, files in os.walk(top):
        dirs.sort()
        rel = os.path.relpath(here, root).replace(os.sep, "/")
        keys += [f"{rel}/{f}" for f in sorted(files) if f.lower().endswith(extensions)]
    return keys


class IdentityScanner:
    """Cached scans of identity folders (the split rule and the stores both need them); an identity's
    folder may be named by its VoxCeleb1 ID or its VGGFace name (data/layout.py).

    Files whose names the lists cannot carry are left out, with the reason, in `unlisted[(modality, id)]`.
    """

    def __init__(self, cfg: EasyDict):
        self.roots = {VOICE: cfg.dataset.audio_data_dir, FACE: cfg.dataset.image_data_dir}
        self._cache: dict[tuple[str, str], tuple[str | None, list[str] | None]] = {}
        self.unlisted: dict[tuple[str, str], list[tuple[str, str]]] = {}  # -> [(file, reason)]

    def found(self, identity: Identity, modality: str) -> tuple[str | None, list[str] | None]:
        """(the identity's folder name on disk, keys of its listable files relative to the root), or (None, None)."""
        key = (modality, identity.vox_id)
        if key not in self._cache:
            root = self.roots[modality]
            folder = identity_folder(root, identity, modality)
            outside = folder and self.outside(modality, folder)
            keys = scan(root, folder, EXTENSIONS[modality]) if folder and not outside else None
            if outside:
                keys = []
                self.unlisted[key] = [(os.path.join(root, folder), outside)]
            reasons = [unlistable_reason(k) or self.outside(modality, k) for k in keys or ()]
            self.unlisted.setdefault(key, [])
            self.unlisted[key] += [(os.path.join(root, k), r) for k, r in zip(keys or (), reasons) if r]
            self._cache[key] = (folder, None if keys is None else [k for k, r in zip(keys, reasons) if not r])
        return self._cache[key]

    def outside(self, modality: str, relative: str) -> str | None:
        """Why root/relative may not be read: a link leading outside the configured folder; else None.
        (os.walk follows no links to folders, so only identity folders and files can lead out.)"""
        path = os.path.join(self.roots[modality], relative)
        if not os.path.islink(path):
            return None
        real_root, real = os.path.realpath(self.roots[modality]), os.path.realpath(path)
        if os.path.commonpath([real_root, real]) == real_root:
            return None
        return f"a link to {real}, outside the folder of config key {ROOT_KEYS[modality]}"

    def voices(self, identity: Identity) -> list[str] | None:
        return self.found(identity, VOICE)[1]

    def faces(self, identity: Identity) -> list[str] | None:
        return self.found(identity, FACE)[1]

    def scan_all(self, identities: list[Identity]) -> None:
        for identity in tqdm(identities, desc="scanning identity folders", unit="id"):
            self.voices(identity), self.faces(identity)
