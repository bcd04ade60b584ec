"""Shared by every part of the suite: tests/support (the synthetic model builders, the NumPy
reference passes, the CUDA plugin builds) on sys.path, so that a test imports its helpers as
top-level modules (`import ggufgen`) from whichever folder it is in."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
