"""Assignment: stable across processes, uniform, layered without overlap, targeted, forced."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from scipy.stats import chi2_contingency, chisquare

from marketrec.core.errors import ConfigError
from marketrec.experiments.assignment import (
    Assigner,
    RequestContext,
    bucket,
    load_experiments,
    parse_experiments,
)

USERS = [f"user-{i}" for i in range(100_000)]


def two_layers() -> dict:
    return {
        "experiments": [
            {
                "name": "ranker-v2",
                "layer": "ranking",
                "traffic": [0, 50],
                "variants": [
                    {"name": "control", "allocation": 50},
                    {"name": "treatment", "allocation": 50, "settings": {"candidates": 500}},
                ],
                "forced": {"qa-anna": "treatment"},
            },
            {
                "name": "diversity",
                "layer": "ranking",
                "traffic": [50, 100],
                "variants": [
                    {"name": "low", "allocation": 20, "settings": {"diversity_strength": 0.1}},
                    {"name": "mid", "allocation": 30, "settings": {"diversity_strength": 0.3}},
                    {"name": "high", "allocation": 50, "settings": {"diversity_strength": 0.6}},
                ],
            },
            {
                "name": "explore",
                "layer": "exploration",
                "variants": [
                    {"name": "off", "allocation": 50, "settings": {"exploration_share": 0.0}},
                    {"name": "on", "allocation": 50, "settings": {"exploration_share": 0.1}},
                ],
                "targeting": {"regions": ["north", "south"], "new_users": True},
            },
        ]
    }


def assigned(assigner: Assigner, **context: object) -> dict[str, dict[str, str]]:
    """user → {experiment: variant} for every test user."""
    out = {}
    for user in USERS:
        result = assigner.assign(RequestContext(user_id=user, **context))  # type: ignore[arg-type]
        out[user] = {a.experiment: a.variant for a in result}
    return out


def test_assignment_is_the_same_in_another_process() -> None:
    config = two_layers()
    here = Assigner(parse_experiments(config))
    mine = {
        u: [(a.experiment, a.variant) for a in here.assign(RequestContext(user_id=u))]
        for u in USERS[:2000]
    }
    script = (
        "import json, sys\n"
        "from marketrec.experiments.assignment import Assigner, RequestContext, "
        "parse_experiments\n"
        "a = Assigner(parse_experiments(json.loads(sys.argv[1])))\n"
        "print(json.dumps({f'user-{i}': [(x.experiment, x.variant) for x in "
        "a.assign(RequestContext(user_id=f'user-{i}'))] for i in range(2000)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin"},  # another hash seed
    )
    theirs = {u: [tuple(x) for x in v] for u, v in json.loads(result.stdout).items()}
    assert theirs == mine


def test_buckets_and_variants_are_uniform() -> None:
    slots = Counter(bucket("layer", u) // 100 for u in USERS)  # 100 groups of 100 buckets
    assert chisquare([slots[g] for g in range(100)]).pvalue > 0.001

    assigner = Assigner(parse_experiments(two_layers()))
    groups = assigned(assigner)
    ranker = Counter(v["ranker-v2"] for v in groups.values() if "ranker-v2" in v)
    diversity = Counter(v["diversity"] for v in groups.values() if "diversity" in v)
    n_ranker, n_diversity = sum(ranker.values()), sum(diversity.values())
    # half the layer each, then the allocations inside
    assert chisquare([n_ranker, n_diversity]).pvalue > 0.001
    assert chisquare([ranker["control"], ranker["treatment"]]).pvalue > 0.001
    expected = [0.2 * n_diversity, 0.3 * n_diversity, 0.5 * n_diversity]
    observed = [diversity["low"], diversity["mid"], diversity["high"]]
    assert chisquare(observed, expected).pvalue > 0.001
    # a 52/48 split is what the test is there to catch: it must fail on 100k users
    skewed = [int(0.52 * n_ranker), n_ranker - int(0.52 * n_ranker)]
    assert chisquare(skewed).pvalue < 1e-6


def test_experiments_in_one_layer_never_overlap_and_layers_are_independent() -> None:
    assigner = Assigner(parse_experiments(two_layers()))
    groups = assigned(assigner, region="north", is_new_user=True)
    assert not [u for u, v in groups.items() if "ranker-v2" in v and "diversity" in v]
    assert all(("ranker-v2" in v) != ("diversity" in v) for v in groups.values())
    # the exploration layer is independent of the ranking layer: a 2×2 table with no
    # association (its own salt)
    table = Counter((v.get("ranker-v2", "none"), v["explore"]) for v in groups.values())
    rows = [[table[(r, e)] for e in ("off", "on")] for r in ("control", "treatment", "none")]
    assert chi2_contingency(rows).pvalue > 0.001


def test_targeting_admits_only_the_requests_it_names() -> None:
    assigner = Assigner(parse_experiments(two_layers()))

    def explore(**context: object) -> set[str]:
        return {
            a.experiment
            for a in assigner.assign(RequestContext(user_id="user-7", **context))  # type: ignore[arg-type]
        }

    assert "explore" in explore(region="north", is_new_user=True)
    assert "explore" not in explore(region="north", is_new_user=False)  # returning user
    assert "explore" not in explore(region="west", is_new_user=True)  # another region
    assert "explore" not in explore(is_new_user=True)  # no region known


def test_forced_variants_override_the_hash_and_settings_merge() -> None:
    assigner = Assigner(parse_experiments(two_layers()))
    result = assigner.assign(RequestContext(user_id="qa-anna", region="north", is_new_user=True))
    by_name = {a.experiment: a for a in result}
    assert by_name["ranker-v2"].variant == "treatment" and by_name["ranker-v2"].forced
    assert "diversity" not in by_name  # forced into the layer's other experiment
    settings = assigner.settings(result)
    assert settings.candidates == 500 and settings.exploration_share in (0.0, 0.1)


def test_an_experiment_keeps_its_users_when_its_range_changes() -> None:
    config = two_layers()
    before = Assigner(parse_experiments(config))
    config["experiments"][0]["traffic"] = [0, 40]
    config["experiments"][1]["traffic"] = [40, 100]
    after = Assigner(parse_experiments(config))
    moved = 0
    for user in USERS[:20_000]:
        old = {a.experiment: a.variant for a in before.assign(RequestContext(user_id=user))}
        new = {a.experiment: a.variant for a in after.assign(RequestContext(user_id=user))}
        if "ranker-v2" in old and "ranker-v2" in new:
            assert old["ranker-v2"] == new["ranker-v2"]
        moved += "ranker-v2" in old and "ranker-v2" not in new
    assert 0 < moved < 0.15 * 20_000  # the 10 % of the layer handed to the other experiment


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["experiments"][0]["variants"][0].update(allocation=60), "add up to 110"),
        (lambda c: c["experiments"][1].update(traffic=[40, 100]), "overlap"),
        (lambda c: c["experiments"][0]["forced"].update(bob="ghost"), "ghost"),
        (lambda c: c["experiments"][2].update(name="ranker-v2"), "names repeat"),
        (lambda c: c["experiments"][0].update(traffic=[60, 50]), "traffic"),
        (lambda c: c["experiments"][0].update(colour="red"), "colour"),
        (
            lambda c: c["experiments"][0]["variants"][1]["settings"].update(candidates=0),
            "candidates",
        ),
    ],
)
def test_a_bad_configuration_is_refused_naming_the_problem(change: object, message: str) -> None:
    config = two_layers()
    change(config)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message):
        parse_experiments(config)


def test_two_layers_setting_the_same_field_is_an_error() -> None:
    config = two_layers()
    config["experiments"][2]["variants"][0]["settings"] = {"candidates": 100}
    config["experiments"][2]["variants"][1]["settings"] = {"candidates": 100}
    config["experiments"][2]["targeting"] = {}
    assigner = Assigner(parse_experiments(config))
    for user in USERS:
        result = assigner.assign(RequestContext(user_id=user))
        if {a.experiment for a in result} == {"ranker-v2", "explore"} and any(
            a.variant == "treatment" for a in result
        ):
            with pytest.raises(ConfigError, match="one layer"):
                assigner.settings(result)
            return
    pytest.fail("no user in both experiments")


def test_experiment_files_load_from_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "experiments.toml"
    toml.write_text(
        '[[experiments]]\nname = "a"\n'
        '[[experiments.variants]]\nname = "control"\nallocation = 50\n'
        '[[experiments.variants]]\nname = "treatment"\nallocation = 50\n'
        "[experiments.variants.settings]\nexploration_share = 0.2\n"
    )
    loaded = load_experiments(toml)
    assert loaded.experiments[0].variants[1].settings.exploration_share == 0.2
    as_json = tmp_path / "experiments.json"
    as_json.write_text(json.dumps(two_layers()))
    assert len(load_experiments(as_json).experiments) == 3
    broken = tmp_path / "broken.toml"
    broken.write_text("[[experiments]\n")
    with pytest.raises(ConfigError, match="not valid toml"):
        load_experiments(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_experiments(tmp_path / "missing.toml")
