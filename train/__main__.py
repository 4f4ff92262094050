"""`python -m flaxenc_train CONFIG.yaml [key=value ...]`, the same as `flaxenc-train`."""

import sys

from flaxenc_train.cli import main

sys.exit(main())
