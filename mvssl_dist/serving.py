"""The registered backbone as an MLflow pyfunc model: what `mlflow models serve` and
``mlflow.pyfunc.load_model`` run.

It is logged *from code* (``pyfunc_model.py`` beside this file names it with
``mlflow.models.set_model``), not pickled: a pickled model is bound to the Python version
and class layout that wrote it, while this loads with whatever release of the package is
installed.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class BackbonePyfunc(mlflow.pyfunc.PythonModel):
    """Input ``[N, 64000]`` float32 16 kHz clips -> ``[N, 1024]`` float32 embeddings."""

    def load_context(self, context) -> None:
        from mvssl_dist.models import load_backbone

        self.model = load_backbone(context.artifacts["backbone"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        # An ndarray hint: MLflow takes the signature from the logged input example.
        import torch

        clips = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.model(clips).numpy()
