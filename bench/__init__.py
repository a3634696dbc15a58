"""NEXUS benchmarks, each runnable as `python -m bench.NAME` from the repository root.

Every benchmark reports ratios or differences against a baseline measured in the
same run: the machines they run on are shared and noisy, so absolute numbers from
different runs do not compare.
"""
