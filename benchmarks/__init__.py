"""atfnn-fast benchmark suite: ``pytest benchmarks --benchmark-only`` (SPEC section 6).

``python -m benchmarks.report`` runs it (or reads pytest-benchmark's JSON) and writes
``benchmarks/results/<device-slug>-<yyyymmdd>.json`` plus a markdown table.
"""
