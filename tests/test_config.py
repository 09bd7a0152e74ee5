import pytest

from pipelines.config import apply_override, load_params
from pipelines.errors import GenforgeError


def test_dotted_override_parses_yaml_values():
    params = {"train": {"epochs": 10}, "data": {"source": "mnist5k"}}
    apply_override(params, "train.epochs=3")
    apply_override(params, "model.families=[vae, dcgan]")
    apply_override(params, "data.source=idx:/tmp/mnist")
    apply_override(params, "data.name=null")
    assert params["train"]["epochs"] == 3
    assert params["model"]["families"] == ["vae", "dcgan"]
    assert params["data"]["source"] == "idx:/tmp/mnist"
    assert params["data"]["name"] is None


@pytest.mark.parametrize("bad", ["noequals", "=3", "data.source.deeper=1"])
def test_bad_override_is_a_clear_error(bad):
    params = {"data": {"source": "mnist5k"}}
    with pytest.raises(GenforgeError, match="--set"):
        apply_override(params, bad)


def test_params_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(GenforgeError, match=str(missing)):
        load_params(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(GenforgeError, match="broken.yaml: not valid YAML"):
        load_params(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(GenforgeError, match="must be a mapping"):
        load_params(listy)
