"""`python -m data.synthetic --out DIR`: the corpus on its own (data/synthetic/corpus.py)."""
from data.synthetic.corpus import main

main()
