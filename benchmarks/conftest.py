"""pytest-benchmark suites (``python -m pytest benchmarks --benchmark-only``). Not part of the
main test run: pytest's testpaths is tests/. One BLAS thread, set before numpy loads."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402,F401  (pins BLAS threads)
