"""torch.hub entry points: the model of a checkpoint, usable from any folder.

    import torch
    matcher = torch.hub.load("/path/to/this/repository", "voice_face_matcher", source="local",
                             checkpoint="experiments/synthetic/checkpoint_best.pth.tar")
    scores = matcher.match(matcher.embed_voices(["clip.wav"])[0], matcher.embed_faces(["a.jpg", "b.png"]))

`checkpoint` is relative to the current folder; `cfg` (by default config/synthetic.yaml, the demo's) is
taken relative to the repository root when it is not found from the current folder.
"""
dependencies = ["torch", "numpy", "soundfile", "librosa", "cv2", "PIL", "dlib", "av", "silero_vad"]


def voice_face_matcher(checkpoint: str, cfg: str = "config/synthetic.yaml", opts=(), device: str | None = None,
                       detect_faces: bool = False):
    """evaluation.matcher.VoiceFaceMatcher of `checkpoint` with the encoders of `cfg` (a path or a loaded config)."""
    from evaluation.matcher import VoiceFaceMatcher

    return VoiceFaceMatcher.load(cfg, checkpoint, opts, device, detect_faces)
