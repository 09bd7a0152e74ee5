"""The import rule of DESIGN.md, checked in fresh interpreters."""
import subprocess
import sys

import pytest


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


@pytest.mark.parametrize("statement", ["import genmodels, genmodels.base", "from genmodels import get_family"])
def test_genmodels_imports_no_orchestration(statement):
    loaded = _modules_after(statement)
    assert not loaded & {"mlflow", "prefect", "great_expectations", "dvc", "onnxruntime", "pipelines"}


@pytest.mark.parametrize("statement", ["import contracts.errors, contracts.io, contracts.data",
                                       "from contracts.modalities import get_modality; get_modality('image')"])
def test_contracts_are_torch_free(statement):
    loaded = _modules_after(statement)
    assert not loaded & {"torch", "mlflow", "prefect", "great_expectations", "dvc", "onnxruntime", "pipelines",
                         "genmodels", "evaluation", "serving"}
