"""Benchmarks: ``python -m bench`` (or ``make bench``) runs them all and prints the results.

Each ``bench_*.py`` module has ``main(argv) -> None``. Numbers only, no assertions: timing
depends on the machine. Results and the machine they came from are kept in bench/README.md.
"""
