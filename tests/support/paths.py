"""Where the tests find things: the repository root they run in (its sources, which some tests
read or build), the tests' own folder and this support folder. Standard library only."""

import os

SUPPORT = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(SUPPORT)
ROOT = os.path.dirname(TESTS)
DATA = os.path.join(SUPPORT, "data")
