"""The command line end to end, and its answer to bad input: one line, non-zero, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from marketrec.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """generate → split → train once for the module (a small world)."""
    root = tmp_path_factory.mktemp("cli")
    assert (
        main(
            [
                "generate",
                str(root / "data"),
                "--users",
                "3000",
                "--items",
                "300",
                "--days",
                "10",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert main(["split", str(root / "data"), str(root / "split"), "--quantile", "0.8"]) == 0
    assert (
        main(
            [
                "train",
                str(root / "split" / "train"),
                "--model",
                "itemknn",
                "--out",
                str(root / "model"),
            ]
        )
        == 0
    )
    return root


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_end_to_end(workspace: Path, capsys) -> None:
    users = workspace / "users.txt"
    test_users = (
        pl.read_parquet(workspace / "split" / "test" / "events.parquet")
        .get_column("user_id")
        .unique()
        .sort()
        .head(50)
        .to_list()
    )
    users.write_text("\n".join([*test_users, "brand-new-user"]) + "\n")
    recs_path = workspace / "recs.parquet"
    assert (
        main(
            [
                "recommend",
                str(workspace / "model"),
                "--users",
                str(users),
                "--k",
                "7",
                "--out",
                str(recs_path),
            ]
        )
        == 0
    )
    recs = pl.read_parquet(recs_path)
    assert recs.columns == ["user_id", "item_id", "rank", "score"]
    assert recs.group_by("user_id").len().get_column("len").to_list() == [7] * 51
    capsys.readouterr()
    out_json = workspace / "metrics.json"
    assert (
        main(
            [
                "evaluate",
                str(workspace / "split"),
                "--model",
                str(workspace / "model"),
                "--k",
                "5",
                "10",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "NDCG@10" in printed and "cold users" in printed
    metrics = json.loads(out_json.read_text())
    assert metrics["ks"] == [5, 10]
    assert 0.0 < metrics["slices"]["all"]["HR@10"] <= 1.0
    # A recommendations file evaluates through the same code
    assert main(["evaluate", str(workspace / "split"), "--recs", str(recs_path), "--k", "5"]) == 0


def test_validate_models_and_tuned_training(workspace: Path, capsys) -> None:
    assert main(["validate", str(workspace / "data")]) == 0
    assert main(["models"]) == 0
    assert "ease" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                str(workspace / "split" / "train"),
                "--model",
                "popularity",
                "--tune",
                "--out",
                str(workspace / "pop"),
            ]
        )
        == 0
    )
    manifest = json.loads((workspace / "pop" / "manifest.json").read_text())
    assert manifest["model"] == "popularity" and "half_life_days" in manifest["params"]


def test_import_csv_with_event_renames(tmp_path: Path) -> None:
    src = tmp_path / "events.csv"
    src.write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,basket,248676,\n"
        "1433221999827,111016,transaction,318965,1\n"
    )
    assert (
        main(
            [
                "import",
                "csv",
                str(src),
                str(tmp_path / "out"),
                "--map",
                "user_id=visitorid",
                "item_id=itemid",
                "ts=timestamp",
                "event=event",
                "--ts-unit",
                "ms",
                "--event-map",
                "basket=add_to_cart",
                "transaction=purchase",
            ]
        )
        == 0
    )
    events = pl.read_parquet(tmp_path / "out" / "events.parquet").sort("ts")
    assert events.get_column("event").to_list() == ["view", "purchase", "add_to_cart"]
    assert events.get_column("user_id").to_list() == ["257597", "111016", "992329"]


def test_train_with_config_file(workspace: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[model]\nname = "ease"\n[model.params]\nl2 = 123.0\n')
    assert (
        main(
            [
                "train",
                str(workspace / "split" / "train"),
                "--config",
                str(config),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["params"]["l2"] == 123.0


def test_two_stage_trains_both_stages_and_recommends(workspace: Path, tmp_path: Path) -> None:
    config = tmp_path / "two.toml"
    config.write_text(
        '[model.params]\ntext_encoder = "hashed"\nepochs = 2\ndim = 16\n'
        '[ranking]\nepochs = 2\nwindow_mode = "global"\n'
        "[pipeline]\nexploration_share = 0.1\n"
    )
    out = tmp_path / "two-stage"
    train = str(workspace / "split" / "train")
    argv = ["train", train, "--model", "two-stage", "--config", str(config), "--out", str(out)]
    assert main(argv) == 0
    assert (out / "pipeline.json").exists() and (out / "ranking" / "ranker.pt").exists()
    assert (out / "retrieval" / "manifest.json").exists()
    users = tmp_path / "users.txt"
    users.write_text("\n".join(["u000001", "u000002", "never-seen"]))
    recs_path = tmp_path / "recs.parquet"
    argv = ["recommend", str(out), "--users", str(users), "--k", "5", "--out", str(recs_path)]
    assert main(argv) == 0
    recs = pl.read_parquet(recs_path)
    assert recs.columns == ["user_id", "item_id", "rank", "score"]
    assert recs.group_by("user_id").len().get_column("len").to_list() == [5, 5, 5]


def test_two_stage_config_errors_name_the_key(workspace: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[pipeline]\nexploration_share = 2.0\n")
    argv = ["train", str(workspace / "data"), "--model", "two-stage", "--config", str(config)]
    assert main([*argv, "--out", str(tmp_path / "m")]) != 0
    assert "exploration_share" in one_error_line(capsys)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["validate", "{tmp}/missing"], "dataset folder not found"),
        (["validate", "{tmp}/broken"], "not a readable Parquet file"),
        (["split", "{tmp}/missing", "{tmp}/out"], "dataset folder not found"),
        (["split", "{ws}/data", "{tmp}/out", "--quantile", "1.5"], "strictly between 0 and 1"),
        (["train", "{ws}/data", "--model", "nope", "--out", "{tmp}/m"], "unknown model 'nope'"),
        (["train", "{tmp}/broken", "--model", "ease", "--out", "{tmp}/m"], "not a readable"),
        (
            ["train", "{ws}/data", "--config", "{tmp}/bad.toml", "--out", "{tmp}/m"],
            "model.nmae: Extra inputs are not permitted",
        ),
        (
            [
                "recommend",
                "{ws}/model",
                "--users",
                "{tmp}/users.txt",
                "--k",
                "0",
                "--out",
                "{tmp}/r.parquet",
            ],
            "must be a positive integer",
        ),
        (
            [
                "recommend",
                "{ws}/model",
                "--users",
                "{tmp}/users.txt",
                "--k",
                "-2",
                "--out",
                "{tmp}/r.parquet",
            ],
            "argument --k",
        ),
        (
            [
                "recommend",
                "{tmp}/missing",
                "--users",
                "{tmp}/users.txt",
                "--k",
                "3",
                "--out",
                "{tmp}/r.parquet",
            ],
            "model folder not found",
        ),
        (
            [
                "recommend",
                "{ws}/model",
                "--users",
                "{tmp}/nousers.txt",
                "--k",
                "3",
                "--out",
                "{tmp}/r.parquet",
            ],
            "user list not found",
        ),
        (
            ["evaluate", "{ws}/split", "--model", "{ws}/model", "--k", "0"],
            "must be a positive integer",
        ),
        (["evaluate", "{tmp}/missing", "--model", "{ws}/model"], "split folder not found"),
        (
            ["evaluate", "{ws}/split", "--recs", "{tmp}/broken/events.parquet"],
            "not a readable Parquet file",
        ),
        (["evaluate", "{ws}/split", "--recs", "{tmp}/norank.parquet"], "'rank' is missing"),
        (["import", "movielens", "{tmp}/missing", "{tmp}/out"], "missing"),
        (
            ["import", "csv", "{tmp}/missing.csv", "{tmp}/out", "--map", "user_id=a"],
            "mapping lacks required column(s) item_id, ts, event",
        ),
        (
            [
                "import",
                "csv",
                "{tmp}/missing.csv",
                "{tmp}/out",
                "--map",
                "user_id=a",
                "item_id=b",
                "ts=c",
                "event=d",
            ],
            "file not found",
        ),
        (["import", "amazon", "{tmp}/missing", "{tmp}/out"], "not found"),
        (
            [
                "import",
                "csv",
                "{tmp}/missing.csv",
                "{tmp}/out",
                "--map",
                "user_id=a",
                "item_id=b",
                "ts=c",
                "event=d",
                "--event-map",
                "oops",
            ],
            "expected SOURCE=CANONICAL",
        ),
        (["generate", "{tmp}/g", "--users", "0"], "must be a positive integer"),
        (["demo", "--models", "nope", "--out", "{tmp}/demo"], "unknown model 'nope'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_one_clear_line(argv, expected, workspace: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "events.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "broken" / "items.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "users.txt").write_text("u1\n")
    (tmp_path / "bad.toml").write_text('[model]\nnmae = "ease"\n')
    pl.DataFrame({"user_id": ["u"], "item_id": ["i"]}).write_parquet(tmp_path / "norank.parquet")
    args = [a.format(tmp=tmp_path, ws=workspace) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(args))
    assert exit_info.value.code not in (0, None)
    line = one_error_line(capsys)
    assert expected in line
