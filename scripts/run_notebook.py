"""Execute a notebook in place (smoke mode by default): python scripts/run_notebook.py analyses/example.ipynb"""

import os
import sys

import nbformat
from nbclient import NotebookClient

path = sys.argv[1] if len(sys.argv) > 1 else "analyses/example.ipynb"
os.environ.setdefault("LAYERPROBE_SMOKE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=300, kernel_name="python3",
               resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
for cell in nb.cells:
    cell.get("metadata", {}).pop("execution", None)  # no timestamps: the file changes only when outputs do
nbformat.write(nb, path)
print(f"executed {path}: {os.path.getsize(path):,} bytes")
