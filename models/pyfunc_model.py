"""The MLflow pyfunc model of a seqcast forecaster, logged as "models from code" (tasks/registry.py passes this
file's path as `python_model`): MLflow copies the file into the model and runs it at load, so nothing is pickled.
Loading needs the `models` package importable, as it does for any seqcast model.
"""

from mlflow.models import set_model

from models.packaging import SeqcastForecaster

set_model(SeqcastForecaster())
