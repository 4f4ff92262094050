"""`python -m train CONFIG.yaml [key=value ...]`, the same as `flaxenc-train`."""

import sys

from train.cli import main

sys.exit(main())
