"""Stage 3: a snapshot of one model on one probe (``take``) and the schema its file must satisfy (``check``).
"""
