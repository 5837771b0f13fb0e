"""Side-by-side benchmarks of rwkv5 against the machine's physical limits and against peers.

Run ``python -m benchmarks [--quick]`` (or ``make bench`` / ``make bench-quick``). Each
``bench_*.py`` module exposes ``run(quick: bool = False)`` returning a section dict (or a list of
them) as built by ``benchmarks.common.section``; see benchmarks/common.py for the shared helpers.
"""
