"""Stage 4, freezing: the offline rule (``rule``), applying it (``apply``), the online policies
(``policy``) and the frozen-prefix cache (``prefix_cache``).
"""
