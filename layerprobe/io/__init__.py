"""Stage 2, the safety boundary: everything read from or written to disk.

Files and bounded JSON (``files``), torch files (``torch_files``), checkpoints and tensor sources
(``checkpoints``, ``pair_reader``), the one model-directory check, class lookup and meta-model
builder (``model_dir``), the one Hugging Face loader (``hf_model``), the one tokenizer loader
(``tokenizer``), probe files (``probe_files``), Trainer state (``trainer_state``), LoRA adapters
(``adapters``) and atomic outputs (``outputs``). Imports the base, ``metrics`` and ``model`` only.
"""
