"""Model code for MLflow's models-from-code logging (see :mod:`mvssl_dist.serving`).

MLflow copies this file into the model and runs it when the model is loaded; it is not meant
to be imported.
"""

import mlflow.models

from mvssl_dist.serving import BackbonePyfunc

mlflow.models.set_model(BackbonePyfunc())
