"""Stage 7, tracking during training: the ``Tracker`` and the probe budget of an auto-freezing run.
"""
