"""retino: train, track and use diabetic-retinopathy graders (ResNet18 / ResNet50).

The package never imports streamlit; ``runs``, ``launch``, ``config`` and ``data`` never
import torch, so the dashboard lists runs without loading it.
"""

__version__ = "0.1.0"
