"""The embedded synthetic corpus: made-up people with a voice and a face, in the VoxCeleb1 / VGGFace layouts.

Every identity draws shared attributes (gender, body size, age, nationality) that shape BOTH
its voice and its face, and modality-only attributes that shape one of them (speaking rate,
breathiness... for the voice; hair colour, glasses, eye colour... for the face). The constants
under "The cross-modal link" in data/synthetic/people.py say how strongly each shared attribute
shows in each modality: raise a slope or lower a spread to make voice-face matching easier.
people.py draws the identities, voices.py and faces.py render them, corpus.py writes the folders.

    python -m data.synthetic --out DIR [--seed S] [--identities N]

writes DIR/wav/<idNNNNN>/<video>/<NNNNN>.wav (16 kHz mono int16), DIR/VGG_ALL_FRONTAL/<Name>/
<NNNNNNNN>.jpg, DIR/vox1_meta.csv (VoxCeleb1 meta format) and DIR/contact_sheet.png.
"""
from data.synthetic.corpus import generate_corpus, write_meta
from data.synthetic.faces import draw_face
from data.synthetic.people import Persona, sample_persona
from data.synthetic.voices import sample_channel, synthesize_clip

__all__ = ["Persona", "draw_face", "generate_corpus", "sample_channel", "sample_persona", "synthesize_clip",
           "write_meta"]
