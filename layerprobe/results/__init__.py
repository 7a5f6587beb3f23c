"""Stage 5, results: the ``Comparison`` type (``comparison``), its rows (``rows``), rendering
(``render``), the JSON schema (``schema``), figures (``plots``) and the trajectory file format
(``trajectory``). Never runs a model.
"""
