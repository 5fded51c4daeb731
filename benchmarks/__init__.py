"""atfnn-fast benchmark suite: ``pytest benchmarks --benchmark-only`` (docs/design.md#benchmarks).

``python -m benchmarks.report`` runs it (or reads pytest-benchmark's JSON) and writes
``benchmarks/results/<device-slug>-<yyyymmdd>.json`` plus a markdown table.
"""
