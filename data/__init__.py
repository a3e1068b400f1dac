"""Data side: synthetic corpus, identity splits, evaluation lists, LMDB stores and datasets.

`python -m data.prepare --cfg CFG` builds everything training and testing read.
"""
