"""The file MLflow runs to build the served model ("models from code": no pickle is loaded).

See mnist_dense/serving/served_model.py for what the model reads and answers.
"""

from mlflow.models import set_model

from mnist_dense.serving.served_model import DigitReader

set_model(DigitReader())
