"""Stage 1, the model: find the blocks, see through wrappers, capture block outputs, batch token ids.

Imports only the base modules (``errors``, ``options``); never reads a file.
"""
