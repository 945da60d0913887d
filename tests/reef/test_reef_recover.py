"""reef/recover.py: the shipped artifact's weights back into diffusers modules, each checked against its graph."""

from __future__ import annotations

import dataclasses
import json

import pytest

from wanrt.engine.defaults import RECIPES, defaults_from_recipe, recipe_for
from wanrt.engine.spec import spec_from_diffusers
from wanrt.errors import ArtifactError
from wanrt.reef import default_model_dir
from wanrt.reef.config import TrainConfig
from wanrt.reef.recover import recipe_of, recover


@pytest.mark.slow  # loads every network and runs each old graph beside it: about a minute on 2 cores
def test_the_shipped_model_is_recovered_exactly(tmp_path):
    from wanrt.engine.artifact import load_artifact

    checks = recover(default_model_dir(), tmp_path / "reef", say=lambda _line: None)
    assert len(checks) == 1 + 2 * 2 + 2 and all(error <= 1e-5 for error in checks.values()), checks
    assert spec_from_diffusers(tmp_path / "reef") == load_artifact(default_model_dir()).spec
    record = json.loads((tmp_path / "reef" / "reef_recovered.json").read_text())
    assert record["checks_max_rel_error"] == checks
    manifest = load_artifact(default_model_dir())  # exporting the folder again records the same defaults
    assert defaults_from_recipe(recipe_for(tmp_path / "reef", manifest.spec), manifest.spec) == manifest.defaults


def test_the_defaults_survive_the_round_trip():
    """recipe_of inverts export's defaults_from_recipe: on the shipped defaults and on every published recipe."""
    from wanrt.engine.artifact import load_artifact

    manifest = load_artifact(default_model_dir())
    assert manifest.defaults is not None and manifest.defaults.recipe == "reef"
    for defaults in (manifest.defaults, *(defaults_from_recipe(r, manifest.spec) for r in RECIPES.values())):
        assert defaults_from_recipe(recipe_of(defaults), manifest.spec) == defaults


def test_a_wrong_architecture_is_refused(tmp_path):
    """Seven layers where the graphs have six: the extra block's weights are nowhere in the graph."""
    with pytest.raises(ArtifactError, match=r"weights not found in the graph: blocks\.6\."):
        recover(default_model_dir(), tmp_path / "reef", dataclasses.replace(TrainConfig.gpu(), layers=7),
                say=lambda _line: None)
    assert not (tmp_path / "reef").exists()
