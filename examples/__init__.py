"""sentence-transformers' example scripts, ported to flaxenc; run from the repo root: `python -m examples.NAME`."""
