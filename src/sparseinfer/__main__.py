"""`python -m sparseinfer`: see sparseinfer.cli."""

import sys

from .cli import main

sys.exit(main())
