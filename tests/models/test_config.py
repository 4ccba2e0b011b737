"""The documented example training config parses, and mistakes in a config are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketrec.core.errors import ConfigError
from marketrec.models.config import load_train_config
from marketrec.models.registry import create, make_params

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "train.example.toml"


def test_example_config_parses_and_builds() -> None:
    config = load_train_config(EXAMPLE)
    assert config.model.name == "ease" and config.model.params == {"l2": 200.0}
    assert config.interactions.to_config().event_weights["purchase"] == 8.0
    make_params(config.model.name, config.model.params)
    create(config.model.name, config.model.params, fallback=config.fallback)


def test_defaults_without_file() -> None:
    assert load_train_config(None).model.name == "als"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model\n", "not valid TOML"),
        ('[tuning]\nprotocol = "sideways"\n', "tuning.protocol"),
        ("[interactions]\ndefault_weight = -1\n", "interactions.default_weight"),
        ("[modle]\n", "modle: Extra inputs are not permitted"),
    ],
)
def test_config_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_train_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_train_config(tmp_path / "missing.toml")
