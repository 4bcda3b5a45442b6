"""devstack benchmarks: scripts that measure and print a table (not tests; pytest does not collect them).

Run ``python -m bench`` (about 4-5 minutes on 2 cores) or ``python -m bench --quick`` (under a minute)
from the repository root. See docs/performance.md for what each scenario measures.
"""
