"""The MLflow "models from code" entry of a genforge model version (see serving/pyfunc.py).

MLflow copies this file into the model directory and runs it when the model is loaded: it defines the
PythonModel and hands it to ``mlflow.models.set_model``, so nothing is pickled or unpickled. The model's
ONNX graphs and sampler.json are its artifact ``onnx``; torch is never imported.

model_config (``mlflow.pyfunc.load_model(uri, model_config={...})``): ``provider`` auto | cpu | cuda,
``threads`` ONNX Runtime intra-op threads (0 = its default).
"""
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class GenforgeSampler(PythonModel):
    """predict(request rows) -> samples (serving.pyfunc.OnnxSampler.predict)."""

    def load_context(self, context):
        from serving.pyfunc import ONNX_ARTIFACT, OnnxSampler

        config = context.model_config or {}
        self.sampler = OnnxSampler(context.artifacts[ONNX_ARTIFACT], provider=config.get("provider") or "auto",
                                   threads=config.get("threads") or None)

    def predict(self, context, model_input: pd.DataFrame, params=None):  # the hint: MLflow uses the signature
        return self.sampler.predict(model_input)


mlflow.models.set_model(GenforgeSampler())
