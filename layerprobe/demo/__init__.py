"""Stage 9, the demo's helpers (not the library's stages): the shipped model and corpora, a small
training loop and ``layerprobe demo``. Used by the demo, the analyses, the benchmarks and the slow tests.
"""
