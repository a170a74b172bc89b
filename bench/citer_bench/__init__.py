"""citer-bench: the benchmarks that back every performance claim of citer-edge.

Each benchmark prints a table and writes JSON (with the machine and exact
settings) and, where a picture helps, a PNG under ``bench/results/``.
"""
