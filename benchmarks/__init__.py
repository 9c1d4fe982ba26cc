"""Side-by-side benchmarks of LoRA, FLARE, input-level fusion, the authors'-style source pass and the MT pipeline.

`python -m benchmarks.run` (or `make bench`) runs every section in one process and writes benchmarks/RESULTS.md.
"""
