import sys

from flaxenc_train.huge_pages import relaunch_with_huge_pages

# Before jax and torch load: host memory in huge pages, for both sides alike (train/huge_pages.py).
relaunch_with_huge_pages()

from bench.cli import main  # noqa: E402

sys.exit(main())
