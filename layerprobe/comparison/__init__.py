"""Stage 6, comparing: resolve each side (``sides``), compare two sides (``compare``), a checkpoint
series (``series``).
"""
