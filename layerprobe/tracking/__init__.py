"""Stage 7, tracking during training: the ``Tracker`` (``tracker``) and the probe budget of an
auto-freezing run (``budget``).
"""
