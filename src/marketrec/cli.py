"""The `marketrec` command line: each command a thin shell over a library function.

Bad input never shows a traceback: errors the user can fix print one line
(`marketrec: error: ...`) and exit non-zero; `--debug` shows the traceback of anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from marketrec.core.errors import ConfigError, DataError, MarketrecError
from marketrec.core.logging import configure_logging
from marketrec.pipeline.config import (
    SERVING_APPLY_LAG_MS,
    SERVING_MAX_BATCH,
    SERVING_RANK_BUDGET_MS,
)

console = Console()
if not console.is_terminal and "COLUMNS" not in os.environ:
    console = Console(width=160)  # logs and CI: wide enough for the metric tables
log = logging.getLogger("marketrec")

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem in one line instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value > 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value


def _timestamp(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got '{text}'") from None


# --------------------------------------------------------------------------- commands
def cmd_validate(args: argparse.Namespace) -> None:
    from marketrec.data.schema import load_dataset

    data = load_dataset(args.data)
    _print_summary(f"{args.data}: valid", data.summary(), data.notes)


def cmd_import(args: argparse.Namespace) -> None:
    from marketrec.data import importers

    if args.source == "movielens":
        data = importers.import_movielens(args.src)
    elif args.source == "amazon":
        data = importers.import_amazon(args.src)
    elif args.source == "sequences":
        data = importers.import_sequences(args.src)
    else:
        data = importers.import_csv(
            args.src,
            importers.parse_mapping(args.map),
            event_map=_event_renames(args.event_map) if args.event_map else None,
            ts_unit=args.ts_unit,
            items=args.items,
            users=args.users,
            item_mapping=importers.parse_mapping(args.item_map, allowed=importers.ITEM_FIELDS)
            if args.item_map
            else None,
            user_mapping=importers.parse_mapping(args.user_map, allowed=importers.USER_FIELDS)
            if args.user_map
            else None,
            separator=args.separator,
        )
    data.save(args.out)
    _print_summary(f"imported {args.source} → {args.out}", data.summary(), data.notes)


def cmd_generate(args: argparse.Namespace) -> None:
    from marketrec.data.synthetic import SyntheticConfig, write_marketplace

    config = SyntheticConfig(
        users=args.users, items=args.items, days=args.days, seed=args.seed, regions=args.regions
    )
    started = time.perf_counter()
    with console.status("generating the marketplace…"):
        data = write_marketplace(args.out, config)
    _print_summary(
        f"generated → {args.out} in {time.perf_counter() - started:.1f}s",
        {**data.summary(), **_event_counts(data.events)},
        (),
    )


def cmd_split(args: argparse.Namespace) -> None:
    from marketrec.data.schema import load_dataset
    from marketrec.data.split import split_global, split_leave_one_out, split_per_user

    data = load_dataset(args.data)
    if args.per_user is not None:
        split = split_per_user(data, test_fraction=args.per_user, min_events=args.min_events or 5)
    elif args.leave_one_out:
        split = split_leave_one_out(data, min_events=args.min_events or 3)
    else:
        split = split_global(data, quantile=args.quantile, at=args.at)
    split.save(args.out)
    console.print(f"{split.description} → {args.out}/train, {args.out}/test")


def cmd_train(args: argparse.Namespace) -> None:
    from marketrec.data.schema import load_dataset
    from marketrec.evaluation.tuning import tune, tune_fallback
    from marketrec.models.config import load_train_config
    from marketrec.models.registry import create, spec

    config = load_train_config(args.config)
    name = args.model or config.model.name
    if name == TWO_STAGE:
        _train_two_stage(args, config)
        return
    spec(name)  # unknown names fail before any data is read
    data = load_dataset(args.data)
    params: dict[str, Any] = dict(config.model.params)
    fallback = config.fallback
    interactions = config.interactions.to_config()
    if args.tune or config.tuning.enabled:
        protocol = args.validation or config.tuning.protocol
        if fallback is None:
            with console.status("tuning the cold-user fallback…"):
                fallback = tune_fallback(data, interactions=interactions)
        result = _with_trial_progress(
            f"tuning {name}",
            lambda on_trial: tune(
                name,
                data,
                protocol=protocol,
                metric=config.tuning.metric,
                base_params=params,
                fallback=fallback,
                interactions=interactions,
                on_trial=on_trial,
            ),
            total=_grid_size(name),
        )
        params = result.best_params
        console.print(
            f"tuned {name} on a {protocol} validation cut: {config.tuning.metric} "
            f"{result.best_score:.4f} with {params}"
        )
    started = time.perf_counter()
    model = create(name, params, fallback=fallback, interactions=interactions)
    with _progress() as progress:
        epochs = getattr(model.scorer.params, "epochs", None)
        task = progress.add_task(f"training {name}", total=epochs)
        if hasattr(model.scorer, "on_epoch"):
            model.scorer.on_epoch = lambda row: progress.update(
                task,
                advance=1,
                description=f"training {name}: epoch {int(row['epoch'])}, "
                f"validation Recall@100 {row['val_recall@100']:.4f}",
            )
        model.fit(data)
        model.save(args.out)
    _record_training_data(args.out, args.data)
    console.print(f"trained {name} in {time.perf_counter() - started:.1f}s → {args.out}")


TWO_STAGE = "two-stage"


def _train_two_stage(args: argparse.Namespace, config: Any) -> None:
    """Two-tower retrieval ([model] params) → re-ranker ([ranking]) → rules, diversity and
    exploration ([pipeline]); one model folder holds both stages."""
    from pydantic import ValidationError

    from marketrec.data.schema import load_dataset
    from marketrec.models.registry import create
    from marketrec.pipeline.config import PipelineConfig
    from marketrec.pipeline.ranking_stage import RankingParams
    from marketrec.pipeline.recommender import Recommender

    if args.tune or config.tuning.enabled:
        raise ConfigError("--tune is not available for two-stage models yet")
    try:
        pipeline = PipelineConfig(**config.pipeline)
        ranking = RankingParams(**config.ranking)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"two-stage config: {problems}") from None
    retrieval = create(
        "two-tower",
        dict(config.model.params),
        fallback=config.fallback,
        interactions=config.interactions.to_config(),
    )
    data = load_dataset(args.data)
    started = time.perf_counter()
    with console.status("training the two-stage model (retrieval twice, then the ranker)…"):
        model = Recommender(retrieval, pipeline, ranking).fit(data)
        model.warm_up()  # the folder then carries the ONNX exports each worker would make
        model.save(args.out)
    _record_training_data(args.out, args.data)
    report = model.ranking.report if model.ranking is not None else None
    if report is not None:
        kept = "kept" if model.ranking.active else "not kept: retrieval order is served"
        console.print(
            f"ranker: validation NDCG@10 {report.best_ndcg:.4f} vs retrieval order "
            f"{report.input_order_ndcg:.4f} ({kept})"
        )
    console.print(f"trained two-stage in {time.perf_counter() - started:.1f}s → {args.out}")


def _record_training_data(model: str, data: str) -> None:
    """So `marketrec retrain MODEL` finds the dataset again."""
    from marketrec.online.versions import record_training_data

    record_training_data(Path(model), Path(data))


def cmd_recommend(args: argparse.Namespace) -> None:
    from marketrec.pipeline.recommender import load_recommender

    users = _read_user_list(args.users)
    model = load_recommender(args.model)
    with console.status(f"recommending for {len(users):,} users…"):
        recs = model.recommend(users, args.k, include_seen=args.include_seen)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recs.write_parquet(out)
    console.print(f"wrote {recs.height:,} recommendations for {len(users):,} users → {out}")


def cmd_serve(args: argparse.Namespace) -> None:
    from marketrec.serving.server import check_model_folder, serve

    check_model_folder(args.model)  # a bad path fails before anything starts
    from marketrec.experiments.exposures import exposure_stream, exposures_in_store
    from marketrec.online.log import DEFAULT_REDIS_PREFIX, redact_url

    store = redact_url(args.store) if args.store else "SQLite in MODEL/state/events.sqlite"
    plural = "s" if args.workers != 1 else ""
    exposures = ""
    if args.experiments or args.rollouts:
        where = args.exposures or "MODEL/state/exposures/"
        if exposures_in_store(args.exposures, args.store):
            where = f"Redis stream {exposure_stream(args.store_prefix or DEFAULT_REDIS_PREFIX)}"
        exposures = f", exposures: {where}"
    console.print(
        f"serving {args.model} on http://{args.host}:{args.port} "
        f"({args.workers} worker{plural}, event log: {store}{exposures}); Ctrl-C stops"
    )
    serve(
        args.model,
        host=args.host,
        port=args.port,
        store=args.store,
        workers=args.workers,
        max_batch=args.max_batch,
        apply_lag_ms=args.apply_lag_ms,
        rank_budget_ms=args.rank_budget_ms,
        store_prefix=args.store_prefix,
        experiments=args.experiments,
        rollouts=args.rollouts,
        exposures=args.exposures,
        models=args.model_version or (),
    )


def _served_model(args: argparse.Namespace) -> tuple[Path, Any, Any]:
    """The served model folder, the dataset it was trained on and its event log (the
    arguments `retrain` and `finetune` share)."""
    from marketrec.data.schema import load_dataset
    from marketrec.online.live import STATE_FOLDER
    from marketrec.online.log import DEFAULT_REDIS_PREFIX, open_log
    from marketrec.online.versions import training_data
    from marketrec.serving.server import check_model_folder

    model = check_model_folder(args.model)
    source = Path(args.data) if args.data else training_data(model)
    if source is None:
        raise ConfigError(
            f"{model}: the folder does not say which dataset it was trained on "
            "(trained before `marketrec train` recorded it); pass --data DATA"
        )
    data = load_dataset(source)
    event_log = open_log(
        args.store, model / STATE_FOLDER, prefix=args.store_prefix or DEFAULT_REDIS_PREFIX
    )
    return model, data, event_log


def _store_prefix_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store-prefix",
        metavar="PREFIX",
        help="key prefix of the Redis store --exposures names (default marketrec:)",
    )


def _served_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the model folder being served (its state/ holds the log)")
    p.add_argument(
        "--data", help="the dataset folder it was trained on (default: what MODEL records)"
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="the event log the service uses (default: SQLite in MODEL/state/events.sqlite)",
    )
    p.add_argument("--store-prefix", metavar="PREFIX", help="key prefix of a Redis store")


def cmd_retrain(args: argparse.Namespace) -> None:
    from marketrec.online.retrain import publish, retrain

    model, data, event_log = _served_model(args)
    source = args.data or "its dataset"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out = Path(args.out) if args.out else model.parent / f"{model.name}-retrained-{stamp}"
    try:
        started = time.perf_counter()
        with console.status(f"retraining on {source} plus the event log…"):
            _, fold = retrain(model, data, event_log, out)
        console.print(
            f"retrained in {time.perf_counter() - started:.1f}s on {fold.data.events.height:,} "
            f"events ({fold.events:,} from the log, up to offset {fold.offset}) → {out}"
        )
        if args.no_publish:
            console.print("not published: `marketrec retrain` without --no-publish swaps it in")
            return
        version, offset = publish(event_log, out)
        console.print(
            f"published {version} at log offset {offset}: every worker following the log "
            "swaps it in once loaded (`GET /readyz` shows the version)"
        )
    finally:
        event_log.close()


def cmd_finetune(args: argparse.Namespace) -> None:
    from marketrec.online.finetune import ContinuousTrainer

    model, data, event_log = _served_model(args)
    trainer = ContinuousTrainer(
        model,
        data,
        event_log,
        every=args.every,
        epochs=args.epochs,
        min_events=args.min_events,
        keep=args.keep,
        publish=not args.no_publish,
        learning_rate_scale=args.learning_rate_scale,
    )
    console.print(f"fine-tuning from {trainer.current}")
    try:
        if args.once:
            result = trainer.step()
            if result is None:
                console.print(f"fewer than {args.min_events:,} new events in the log: nothing done")
            else:
                console.print(
                    f"fine-tuned on {result.new_events:,} new events in {result.seconds:.1f}s "
                    f"(log offset {result.offset}) → {result.folder}"
                    + ("" if args.no_publish else "; published")
                )
            return
        console.print(f"every {args.every:g}s; Ctrl-C stops")
        try:
            trainer.run()
        except KeyboardInterrupt:
            trainer.stop.set()
    finally:
        event_log.close()


def cmd_evaluate(args: argparse.Namespace) -> None:
    from marketrec.data.split import load_split
    from marketrec.evaluation.offline import (
        TargetConfig,
        evaluate_model,
        evaluate_recommendations,
    )

    targets = TargetConfig(
        min_rating=args.min_rating, events=tuple(args.target_events), all_events=args.all_events
    )
    if args.recs is not None and not Path(args.recs).is_file():
        raise DataError(str(args.recs), "recommendations file not found")
    model = None
    if args.model is not None:
        from marketrec.pipeline.recommender import load_recommender

        model = load_recommender(args.model)
    split = load_split(args.split)
    with console.status("evaluating…"):
        if model is not None:
            report = evaluate_model(model, split, ks=args.k, targets=targets)
        else:
            recs = _read_parquet(Path(args.recs))
            report = evaluate_recommendations(
                recs,
                split,
                ks=args.k,
                targets=targets,
                model=Path(args.recs).name,
                source=str(args.recs),
            )
    console.print(report.table())
    console.print(f"evaluated in {report.seconds:.2f}s")
    if args.json:
        console.print(f"metrics → {report.write_json(args.json)}")


def cmd_models(args: argparse.Namespace) -> None:
    from marketrec.models.registry import MODELS

    table = Table(title="models")
    for column in ("name", "what", "parameters (defaults)"):
        table.add_column(column)
    for s in MODELS.values():
        defaults = s.params().model_dump() if not s.fixed else s.params(**s.fixed).model_dump()
        table.add_row(s.name, s.summary, ", ".join(f"{k}={v}" for k, v in defaults.items()))
    from marketrec.pipeline.config import PipelineConfig
    from marketrec.pipeline.ranking_stage import RankingParams

    table.add_row(
        TWO_STAGE,
        "two-tower retrieval → DCN-v2 re-ranker → rules → diversity → exploration "
        "([model.params] for retrieval, [ranking] and [pipeline] sections)",
        ", ".join(
            f"{k}={v}"
            for k, v in {**RankingParams().model_dump(), **PipelineConfig().model_dump()}.items()
        ),
    )
    console.print(table)


def cmd_demo(args: argparse.Namespace) -> None:
    from marketrec.evaluation.demo import DemoConfig, run_demo

    config = DemoConfig(
        out=Path(args.out),
        users=args.users,
        items=args.items,
        days=args.days,
        seed=args.seed,
        models=tuple(args.models),
        tune=not args.no_tune,
        serving_model=not args.no_serve,
    )
    started = time.perf_counter()
    with console.status("demo…") as status:
        result = run_demo(config, on_step=lambda text: status.update(f"demo: {text}…"))
    console.print(result.summary)
    console.print(result.table)
    console.print(
        f"demo finished in {time.perf_counter() - started:.0f}s; "
        f"data, models and metrics are in {config.out}/"
    )
    if result.model is None or result.example is None:
        return
    url = f"http://{args.host}:{args.port}"
    console.print(_DEMO_REQUESTS.format(url=url, model=result.model, **result.example))
    # a fresh process: granian forks its workers, and a fork of this one, whose torch thread
    # pools trained the model, hung in the worker (measured)
    serve_args = ["serve", str(result.model), "--host", args.host, "--port", str(args.port)]
    code = "import sys; from marketrec.cli import main; sys.exit(main())"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-c", code, *serve_args])


_DEMO_REQUESTS = """
serving the two-stage model {model} on {url} (Ctrl-C stops; `marketrec serve {model}` again later)
try, from another terminal:
  curl '{url}/v1/recommendations?user_id={user}&k=5'
  curl -X POST {url}/v1/events -H 'content-type: application/json' \\
       -d '{{"user_id": "{user}", "item_id": "{item}", "event": "purchase"}}'
  curl '{url}/v1/recommendations?user_id={user}&k=5'        # {item} is left out now
  curl '{url}/v1/users/{user}/history?limit=5'
  curl '{url}/v1/recommendations?user_id=someone-new&region={region}&k=5'   # cold start
  curl -X PUT {url}/v1/items/new-product -H 'content-type: application/json' \\
       -d '{{"title": "a brand new product", "category": "{category}", "price": 19.9}}'
  curl '{url}/metrics'   # Prometheus;  {url}/docs: the OpenAPI page
"""


# --------------------------------------------------------------------------- helpers
def _event_renames(pairs: Sequence[str]) -> dict[str, str]:
    """`--event-map addtocart=add_to_cart ...` → {source name: canonical name}."""
    renames: dict[str, str] = {}
    for pair in pairs:
        source, sep, target = (part.strip() for part in pair.partition("="))
        if not sep or not source or not target:
            raise ConfigError(
                f"--event-map {pair!r}: expected SOURCE=CANONICAL, e.g. addtocart=add_to_cart"
            )
        renames[source] = target
    return renames


def _error_line(text: str) -> None:
    """One unwrapped line on stderr, whatever the terminal width."""
    sys.stderr.write(" ".join(text.split()) + "\n")


def _progress() -> Progress:
    """The one progress bar style of the CLI: spinner, label, bar, done/total; erased after."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )


def _with_trial_progress(label: str, run: Any, total: int) -> Any:
    with _progress() as progress:
        task = progress.add_task(label, total=total)
        return run(lambda trial: progress.advance(task))


def _grid_size(name: str) -> int:
    from marketrec.evaluation.tuning import grid_points

    return len(grid_points(name))


def _read_user_list(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise DataError(str(file), "user list not found (one user id per line)")
    try:
        lines = file.read_text().splitlines()
    except UnicodeDecodeError:
        raise DataError(str(file), "not a text file (one user id per line)") from None
    users = [line.strip() for line in lines if line.strip()]
    if not users:
        raise DataError(str(file), "no user ids in the file (one user id per line)")
    return users


def cmd_experiment_report(args: argparse.Namespace) -> None:
    from marketrec.experiments.report import write_report

    result = _experiment_result(args, args.experiment, args.control, _exposures(args))
    as_json, page = write_report(result, Path(args.out))
    srm = result["sample_ratio"]
    console.print(
        f"{args.experiment}: {sum(v['users'] for v in result['variants'].values()):,} users; "
        f"sample ratio p = {srm['p_value']:.3g}{' (MISMATCH)' if srm['mismatch'] else ''}"
        f" → {as_json}, {page}"
    )


def _named(values: list[str] | None, what: str) -> dict[str, str]:
    """NAME=VALUE pairs, names unique."""
    out: dict[str, str] = {}
    for text in values or []:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{what}: expected NAME=VALUE, got '{text}'")
        if name in out:
            raise ConfigError(f"{what}: '{name}' given twice")
        out[name] = value
    return out


def cmd_simulate(args: argparse.Namespace) -> None:
    import dataclasses
    from contextlib import ExitStack

    from rich.progress import Progress

    from marketrec.data.schema import load_dataset
    from marketrec.data.synthetic.truth import GROUND_TRUTH_DIR, GroundTruth
    from marketrec.experiments.assignment import load_experiments
    from marketrec.experiments.exposures import ExposureLog, read_exposures
    from marketrec.experiments.report import analyse, attribute, write_report
    from marketrec.experiments.rollout import RolloutStore
    from marketrec.experiments.simulator import (
        HttpArm,
        SimulationConfig,
        Simulator,
        judge,
        start_of,
        truth_summary,
    )
    from marketrec.serving.process import ServiceProcess

    models, urls = _named(args.arm, "--arm"), _named(args.url, "--url")
    arm_settings = _arm_settings(args.arm_settings, models)
    names = [*models, *urls]
    if len(names) < 2 or len(set(names)) < len(names):
        raise ConfigError("simulate: give two or more arms with distinct names (--arm/--url)")
    if args.rollout and len(names) != 2:
        raise ConfigError("simulate --rollout: give two arms, the current version first")
    if args.one_service and not (args.rollout and len(models) == 2):
        raise ConfigError("simulate --one-service: a --rollout of two --arm model folders")
    for name, folder in models.items():
        if not Path(folder).is_dir():
            raise ConfigError(f"--arm {name}: model folder '{folder}' not found")
    world = Path(args.world)
    if not (world / GROUND_TRUTH_DIR).is_dir():
        raise ConfigError(
            f"{world}: no {GROUND_TRUTH_DIR}/ folder; simulate needs a world written by "
            "`marketrec generate` (its users' true tastes decide their clicks)"
        )
    data, truth = load_dataset(world), GroundTruth.load(world / GROUND_TRUTH_DIR)
    control = args.control or names[0]
    if control not in names:
        raise ConfigError(f"--control '{control}' is not an arm ({', '.join(names)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = args.start or start_of(data)
    config = SimulationConfig(
        start=start, days=args.days, users=args.users, k=args.k, seed=args.seed
    )
    experiments = load_experiments(args.experiments) if args.experiments else None
    if experiments is not None:
        config = dataclasses.replace(config, experiment=experiments.experiments[0].name)
    with ExitStack() as stack:
        servers = {}
        for name, folder in models.items():
            store = ["--store", f"sqlite:///{(out / 'stores' / f'{name}.sqlite').resolve()}"]
            (out / "stores").mkdir(exist_ok=True)
            if name in arm_settings:  # the arm's settings for all its users, through serve
                file = out / "settings" / f"{name}.json"
                file.parent.mkdir(exist_ok=True)
                file.write_text(json.dumps(arm_settings[name]))
                store += ["--experiments", str(file)]
                store += ["--exposures", str(out / "service-exposures" / name)]
            server = ServiceProcess(Path(folder), store, out / "logs" / f"{name}.log")
            stack.callback(server.stop)
            servers[name] = server
        with console.status(f"starting {len(servers)} service(s)…"):
            for server in servers.values():
                server.wait_ready()
        arms = {name: HttpArm(name, s.url) for name, s in servers.items()}
        arms |= {name: HttpArm(name, url) for name, url in urls.items()}
        arms = {name: arms[name] for name in names}  # control first, as given
        exposures = ExposureLog(out / "exposures")
        stack.callback(exposures.close)
        staged, front = None, None
        if args.rollout:
            model = str(Path(models[names[1]]).resolve()) if args.one_service else None
            staged = _staged_rollout(args, config, data, truth, names, out, model)
            experiments = None
            config = dataclasses.replace(config, experiment=f"rollout:{args.rollout}")
        if args.one_service:  # one serve of the current version, following the rollout
            extra = ["--store", f"sqlite:///{(out / 'stores' / 'one-service.sqlite').resolve()}"]
            extra += ["--rollouts", str(out / "rollouts.json")]
            extra += ["--exposures", str(out / "service-exposures" / "one-service")]
            server = ServiceProcess(Path(models[names[0]]), extra, out / "logs" / "one.log")
            stack.callback(server.stop)
            with console.status("starting the service that hosts both versions…"):
                server.wait_ready()  # ready: the candidate's folder is loaded and replayed
            front = HttpArm("one-service", server.url)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"simulating {args.days:g} day(s)", total=1.0)
            simulator = Simulator(
                data,
                truth,
                arms,
                config,
                experiments,
                exposures,
                progress=lambda done: bar.update(task, completed=done),
                router=staged.router if staged else None,
                after_day=staged.after_day if staged else None,
                front=front,
            )
            result = simulator.run()
        exposures.close()
    result.events.write_parquet(out / "events.parquet")
    listed = data.items.filter(pl.col("created_at") >= start).get_column("item_id").to_list()
    truth_block = truth_summary(result, control, data.items.height, set(listed))
    table = attribute(read_exposures(out / "exposures"), result.events)
    if staged is not None:  # the rollout's variants are new/control, not the arms' names
        analysis = analyse(table, config.experiment, "control")
        true = truth_block["true_ctr_difference"][staged.candidate]
        verdicts = judge(analysis, {"true_ctr_difference": {"new": true}})
        rollout = RolloutStore(out / "rollouts.json").get(args.rollout)
        analysis["rollout"] = {
            "stage": rollout.stage,
            "days": staged.log,
            "history": [h.model_dump() for h in rollout.history],
        }
        if result.front is not None:
            analysis["rollout"]["one_service"] = result.front
    else:
        analysis = analyse(table, config.experiment, control)
        verdicts = judge(analysis, truth_block)
    analysis["truth"] = truth_block | {"verdicts": verdicts}
    as_json, page = write_report(analysis, out)
    lines = [
        f"{result.seconds:.0f} s, {len(result.sessions):,} sessions, "
        f"{result.events.height:,} events → {as_json}, {page}"
    ]
    for arm, verdict in analysis["truth"]["verdicts"].items():
        arm = f"{staged.candidate} (new)" if staged is not None else arm
        lines.append(
            f"{arm} vs {control}: CTR difference estimated {verdict['estimated']:+.4f} "
            f"[{verdict['low']:+.4f}, {verdict['high']:+.4f}], true {verdict['true']:+.4f}"
            f" ({'covered' if verdict['covered'] else 'NOT covered'})"
        )
        revenue = verdict.get("revenue_per_user")
        if revenue:
            lines.append(
                f"  revenue per user: estimated {revenue['estimated']:+.3f} "
                f"[{revenue['low']:+.3f}, {revenue['high']:+.3f}], true {revenue['true']:+.3f}"
                f" ({'covered' if revenue['covered'] else 'NOT covered'})"
            )
    if staged is not None:
        final = analysis["rollout"]
        lines.append(f"rollout '{args.rollout}': {final['stage']}")
        lines += [f"  {h['stage']} {h['percent']:g} % ({h['reason']})" for h in final["history"]]
    if result.front is not None:
        counts = result.front
        lines.append(
            f"one service hosting both versions served {counts['sessions']:,} sessions: "
            f"{counts['same_version']:,} by the version the rollout assigns, "
            f"{counts['same_list']:,} with the list that version's own service gave"
        )
    console.print("\n".join(lines))


def _arm_settings(values: list[str] | None, models: dict[str, str]) -> dict[str, Any]:
    """`--arm-settings NAME=key=value,key=value` → an experiments file per arm with one
    variant for all its users carrying those pipeline settings."""
    from marketrec.experiments.assignment import VariantSettings

    out = {}
    for name, text in _named(values, "--arm-settings").items():
        if name not in models:
            raise ConfigError(f"--arm-settings {name}: not an --arm started from a model folder")
        pairs = dict(part.partition("=")[::2] for part in text.split(","))
        try:
            settings = VariantSettings.model_validate(pairs)
        except ValueError as exc:  # pydantic's ValidationError
            raise ConfigError(f"--arm-settings {name}: {exc}") from None
        variant = {"name": "all", "allocation": 100.0}
        variant["settings"] = settings.model_dump(exclude_none=True)
        out[name] = {"experiments": [{"name": f"arm:{name}", "variants": [variant]}]}
    return out


def _staged_rollout(
    args: argparse.Namespace,
    config: Any,
    data: Any,
    truth: Any,
    names: list[str],
    out: Path,
    model: str | None = None,
) -> Any:
    """The `--rollout` driver: `--internal-users` of the simulated users signed up before
    the start, and the region stage in `--rollout-region` (default: the most common);
    `model`: the candidate's folder, named in the rollout (`--one-service`)."""
    from marketrec.experiments.rollout import RolloutStore
    from marketrec.experiments.simulator import StagedRollout, population

    users = population(data, config, {str(u) for u in truth.user_ids})
    start = config.start.timestamp()
    before = [u for u, s in zip(users["user_id"], users["signup"], strict=True) if s < start]
    internal = tuple(before[: args.internal_users])
    regions = [r for r in users["region"] if r]
    region = args.rollout_region or (max(set(regions), key=regions.count) if regions else None)
    if not internal or region is None:
        raise ConfigError("simulate --rollout: no simulated user signed up before the start")
    state = out / "rollouts.json"
    state.unlink(missing_ok=True)
    return StagedRollout(
        RolloutStore(state),
        args.rollout,
        names[0],
        names[1],
        internal,
        (region,),
        out / "exposures",
        model=model,
    )


def _exposures(args: argparse.Namespace) -> pl.DataFrame:
    """`--exposures`: a folder or file, or a Redis store's stream (keys under
    `--store-prefix`)."""
    from marketrec.experiments.exposures import read_exposures
    from marketrec.online.log import DEFAULT_REDIS_PREFIX

    if args.store_prefix is not None and not args.store_prefix:
        raise ConfigError("--store-prefix must not be empty")
    return read_exposures(args.exposures, args.store_prefix or DEFAULT_REDIS_PREFIX)


def _experiment_result(
    args: argparse.Namespace, experiment: str, control: str, exposures: pl.DataFrame
) -> Any:
    """`exposures`, `--events` and `--window-hours` attributed and analysed."""
    from datetime import timedelta

    from marketrec.experiments.report import analyse, attribute, pre_period_revenue

    events = _read_parquet(Path(args.events))
    table = attribute(exposures, events, window=timedelta(hours=args.window_hours))
    cuped_days = getattr(args, "cuped_days", None)
    pre = None
    if cuped_days:
        mine = exposures.filter(pl.col("experiment") == experiment)
        pre = pre_period_revenue(mine, events, cuped_days)
    resamples = getattr(args, "bootstrap", None) or 0
    return analyse(table, experiment, control, pre_revenue=pre, bootstrap_resamples=resamples)


def cmd_rollout(args: argparse.Namespace) -> None:
    from marketrec.experiments.assignment import VariantSettings
    from marketrec.experiments.rollout import RolloutStore

    store = RolloutStore(args.state)
    if args.action == "start":
        model, version = None, None
        if args.model is not None:
            from marketrec.online.versions import model_version
            from marketrec.serving.server import check_model_folder

            folder = check_model_folder(args.model)
            model, version = str(folder), model_version(folder)
        try:
            settings = VariantSettings(
                model=model,
                model_version=version,
                candidates=args.candidates,
                diversity_strength=args.diversity_strength,
                exploration_share=args.exploration_share,
            )
        except ValueError as exc:  # pydantic's ValidationError
            raise ConfigError(f"rollout settings: {exc}") from None
        rollout = store.start(args.name, settings, tuple(_names(args.internal_users)))
    elif args.action == "promote":
        rollout = store.promote(args.name, args.percent, tuple(_names(args.regions or "")))
    elif args.action == "rollback":
        rollout = store.rollback(args.name, args.reason)
    elif args.action == "guard":
        rollout = _guard(args, store)
    else:
        for rollout in store.load().values():
            console.print(_rollout_line(rollout))
        return
    console.print(_rollout_line(rollout))


def _guard(args: argparse.Namespace, store: Any) -> Any:
    """One guardrail check, or with `--every` one per period until the rollout ends
    (completed or rolled back): the rollout stops by itself when a guardrail degrades."""
    from marketrec.experiments.rollout import guard

    while True:
        exposures = _exposures(args)  # an unreadable source fails at once, even with --every
        try:
            result = _experiment_result(args, f"rollout:{args.name}", "control", exposures)
        except ConfigError as exc:  # no exposures of the rollout yet
            if not args.every:
                raise
            console.print(f"waiting: {exc}")
            rollout = store.get(args.name)
        else:
            rollout, violations = guard(store, args.name, result)
            if violations:
                console.print(f"guardrail violated: {'; '.join(violations)}: rolled back")
            else:
                console.print("guardrails hold")
        if not args.every or not rollout.active:
            return rollout
        time.sleep(args.every)


def _rollout_line(rollout: Any) -> str:
    where = f" in {', '.join(rollout.regions)}" if rollout.regions else ""
    last = rollout.history[-1].reason if rollout.history else ""
    return f"{rollout.name}: {rollout.stage} {rollout.percent:g} %{where} ({last})"


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for corrupt files
        raise DataError(str(path), f"not a readable Parquet file ({str(exc)[:200]})") from exc


def _event_counts(events: pl.DataFrame) -> dict[str, int]:
    counts = events.group_by("event").agg(pl.len()).sort("len", descending=True)
    return {f"events: {e}": n for e, n in counts.iter_rows()}


def _print_summary(title: str, counts: dict[str, int], notes: Sequence[str]) -> None:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in counts.items():
        table.add_row(key, f"{value:,}")
    console.print(table)
    for note in notes:
        console.print(f"  note: {note}")


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="marketrec", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="log progress in detail")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a dataset folder against the canonical schema")
    p.add_argument("data")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("import", help="import a public dataset or a clickstream CSV")
    isub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for source, text in (
        ("movielens", "MovieLens 100K or 1M folder"),
        ("amazon", "Amazon review dump: reviews + meta_*.json"),
        ("sequences", "item sequences, one user a line (S3-Rec format, e.g. Amazon Toys)"),
    ):
        q = isub.add_parser(source, help=text)
        q.add_argument("src")
        q.add_argument("out")
        q.set_defaults(run=cmd_import)
    q = isub.add_parser("csv", help="clickstream CSV with a column mapping (e.g. RetailRocket)")
    q.add_argument("src")
    q.add_argument("out")
    q.add_argument(
        "--map",
        nargs="+",
        required=True,
        metavar="FIELD=COLUMN",
        help="canonical field = source column, e.g. user_id=visitorid",
    )
    q.add_argument(
        "--event-map",
        nargs="+",
        metavar="SOURCE=CANONICAL",
        help="rename event values, e.g. addtocart=add_to_cart",
    )
    q.add_argument("--ts-unit", choices=("s", "ms", "us"), help="unit of epoch timestamps")
    q.add_argument("--items", help="catalogue CSV")
    q.add_argument("--users", help="user profile CSV")
    q.add_argument("--item-map", nargs="+", metavar="FIELD=COLUMN")
    q.add_argument("--user-map", nargs="+", metavar="FIELD=COLUMN")
    q.add_argument("--separator", default=",")
    q.set_defaults(run=cmd_import)

    p = sub.add_parser("generate", help="generate the synthetic marketplace")
    p.add_argument("out")
    p.add_argument("--users", type=_positive_int, default=20_000)
    p.add_argument("--items", type=_positive_int, default=3_000)
    p.add_argument("--days", type=_positive_int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regions", type=_positive_int, default=4)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("split", help="train/test split (global, per user or leave-one-out)")
    p.add_argument("data")
    p.add_argument("out")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--quantile",
        type=_fraction,
        default=0.8,
        help="cut at this quantile of event time (default 0.8, protocol P1g)",
    )
    how.add_argument("--at", type=_timestamp, help="cut at this ISO 8601 time")
    how.add_argument(
        "--per-user",
        type=_fraction,
        metavar="FRACTION",
        help="hold out each user's last FRACTION of events (protocol P1u: 0.2)",
    )
    how.add_argument(
        "--leave-one-out",
        action="store_true",
        help="hold out each user's last event (protocol P3)",
    )
    p.add_argument(
        "--min-events",
        type=_positive_int,
        help="with --per-user (default 5) or --leave-one-out (default 3): "
        "users with fewer events stay in train",
    )
    p.set_defaults(run=cmd_split)

    p = sub.add_parser("train", help="train a model on every event of a dataset")
    p.add_argument("data")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument(
        "--model",
        help="model name (default: the config's, else als); two-stage = two-tower retrieval "
        "and a neural re-ranker in one folder",
    )
    p.add_argument("--config", help="TOML training config (see configs/train.example.toml)")
    p.add_argument(
        "--tune",
        action="store_true",
        help="choose hyper-parameters on a validation cut of the data",
    )
    p.add_argument(
        "--validation",
        choices=("global", "per-user", "leave-one-out"),
        help="validation cut for --tune (default: global)",
    )
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("recommend", help="top-K recommendations for a list of users")
    p.add_argument("model")
    p.add_argument("--users", required=True, help="text file, one user id per line")
    p.add_argument("--k", type=_positive_int, default=10)
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument(
        "--include-seen", action="store_true", help="keep items the user already interacted with"
    )
    p.set_defaults(run=cmd_recommend)

    p = sub.add_parser("serve", help="serve the HTTP API (CONTRACT §6) for a model folder")
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument(
        "--store",
        metavar="URL",
        help="event log: redis://HOST:PORT/DB or sqlite:///PATH "
        "(default: SQLite in MODEL/state/events.sqlite)",
    )
    p.add_argument(
        "--store-prefix",
        metavar="PREFIX",
        help="key prefix of a Redis store (default marketrec:), so several deployments or "
        "test runs share one database; SQLite ignores it",
    )
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--max-batch",
        type=_positive_int,
        default=SERVING_MAX_BATCH,
        help="requests that queued while a worker was busy answered in one pass of the "
        f"pipeline (default {SERVING_MAX_BATCH}; 1: one at a time)",
    )
    p.add_argument(
        "--apply-lag-ms",
        type=_non_negative_float,
        default=SERVING_APPLY_LAG_MS,
        help="how long other users' events may wait before a worker applies them (a "
        "user's own events, item and user updates are applied before their next list "
        f"always; default {SERVING_APPLY_LAG_MS:g}; 0: apply the whole log before every list)",
    )
    p.add_argument(
        "--rank-budget-ms",
        type=_positive_float,
        default=None,
        help="milliseconds a request may spend, its wait before a worker reads it included "
        "(X-Request-Start), before its ranking starts; a pass whose oldest request is past "
        "it keeps retrieval order and the responses say so (`degraded`). Default: the "
        "model's own, else "
        f"{SERVING_RANK_BUDGET_MS:g}",
    )
    p.add_argument(
        "--experiments",
        metavar="FILE",
        help="A/B experiments (TOML or JSON): each request is served with its variants' "
        "settings, named in the response, and logged as exposures (see --exposures)",
    )
    p.add_argument(
        "--rollouts",
        metavar="FILE",
        help="staged rollouts' state file (`marketrec rollout`): re-read when it changes",
    )
    p.add_argument(
        "--exposures",
        metavar="DIR",
        help="log exposures to files in DIR (default: a Redis store's stream "
        "PREFIXexposures, shared by every worker and machine; else MODEL/state/exposures/)",
    )
    p.add_argument(
        "--model-version",
        metavar="DIR",
        action="append",
        help="also host the model version in DIR beside MODEL, over the same event log, for "
        'the variants and rollouts that name it (repeatable; a variant\'s `model = "DIR"` '
        "is hosted without it)",
    )
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser(
        "retrain",
        help="retrain a served model on its dataset plus its event log; workers swap it in",
    )
    _served_model_arguments(p)
    p.add_argument(
        "--out", help="the new model folder (default: MODEL-retrained-<UTC time> beside MODEL)"
    )
    p.add_argument(
        "--no-publish",
        action="store_true",
        help="only train: do not append the model record that makes workers swap it in",
    )
    p.set_defaults(run=cmd_retrain)

    p = sub.add_parser(
        "finetune",
        help="continuous learning: fine-tune a served model on its event log in micro-batches "
        "and publish each version (workers swap it in)",
    )
    _served_model_arguments(p)
    p.add_argument(
        "--every",
        type=_positive_float,
        default=300.0,
        help="seconds between micro-batches (default 300)",
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=1, help="passes over each micro-batch (default 1)"
    )
    p.add_argument(
        "--min-events",
        type=_positive_int,
        default=1,
        help="fine-tune only once this many new events arrived (default 1)",
    )
    p.add_argument(
        "--keep", type=_positive_int, default=3, help="fine-tuned folders kept (default 3)"
    )
    p.add_argument(
        "--learning-rate-scale",
        type=_positive_float,
        default=0.1,
        help="fine-tuning step size relative to training's (default 0.1: a fresh optimizer's "
        "first steps at the full rate jolt trained weights; measured in docs/benchmarks.md)",
    )
    p.add_argument("--once", action="store_true", help="one micro-batch now, then exit")
    p.add_argument(
        "--no-publish",
        action="store_true",
        help="only train: do not append the model records that make workers swap versions in",
    )
    p.set_defaults(run=cmd_finetune)

    p = sub.add_parser("experiment", help="A/B experiments: analysis and reports")
    esub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = esub.add_parser(
        "report",
        help="effects per variant with 95 %% intervals (user as the unit), sample-ratio "
        "check, per-region breakdown: report.json and report.html",
    )
    e.add_argument("experiment", help="the experiment's name in the exposures")
    e.add_argument(
        "--exposures",
        required=True,
        help="the service's exposure folder (MODEL/state/exposures), a Parquet/JSONL file "
        "(request_id, ts, user_id, experiment, variant, items (list), [region]) or the "
        "service's Redis store (redis://HOST:PORT/DB: its stream PREFIXexposures)",
    )
    _store_prefix_argument(e)
    e.add_argument("--events", required=True, help="Parquet of events (CONTRACT §1 fields)")
    e.add_argument("--control", default="control", help="the control variant (default control)")
    e.add_argument(
        "--window-hours",
        type=_positive_float,
        default=24.0,
        help="an event counts for the latest exposure of its item this many hours before it",
    )
    e.add_argument(
        "--bootstrap",
        type=_positive_int,
        metavar="RESAMPLES",
        help="also bootstrap intervals (resampling users) of the per-user metrics",
    )
    e.add_argument(
        "--cuped-days",
        type=_positive_float,
        metavar="DAYS",
        help="CUPED: adjust revenue per user by each user's purchases in the DAYS before the "
        "experiment's first exposure (from --events)",
    )
    e.add_argument("--out", required=True, help="folder for report.json and report.html")
    e.set_defaults(run=cmd_experiment_report)

    p = sub.add_parser(
        "rollout", help="staged rollout: staging → region → global, guardrails, rollback"
    )
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("start", "start in staging: only the internal users get the new settings"),
        ("promote", "to a region stage, up its ramp, to global, to 100 % (completed)"),
        ("rollback", "stop it: nobody gets the new settings"),
        ("guard", "analyse the exposures so far; roll back if a guardrail is worse"),
        ("status", "every rollout's stage"),
    ):
        r = rsub.add_parser(action, help=text)
        if action != "status":
            r.add_argument("name")
        r.add_argument("--state", required=True, help="the rollouts' JSON state file")
        if action == "start":
            r.add_argument("--internal-users", required=True, help="comma-separated user ids")
            r.add_argument(
                "--model",
                metavar="DIR",
                help="roll out the model version in DIR: each service reading the state "
                "file hosts it beside its own model",
            )
            r.add_argument("--candidates", type=_positive_int)
            r.add_argument("--diversity-strength", type=float)
            r.add_argument("--exploration-share", type=float)
        elif action == "promote":
            r.add_argument("--percent", type=_positive_float)
            r.add_argument("--regions", help="comma-separated regions (from staging)")
        elif action == "rollback":
            r.add_argument("--reason", default="manual")
        elif action == "guard":
            r.add_argument(
                "--exposures",
                required=True,
                help="the service's exposure folder, or its Redis store (redis://HOST:PORT/DB)",
            )
            _store_prefix_argument(r)
            r.add_argument("--events", required=True, help="Parquet of events")
            r.add_argument("--window-hours", type=_positive_float, default=24.0)
            r.add_argument(
                "--every",
                type=_positive_float,
                metavar="SECONDS",
                help="keep checking every SECONDS until the rollout completes or is rolled back",
            )
        r.set_defaults(run=cmd_rollout)

    p = sub.add_parser(
        "simulate",
        help="A/B test recommenders on simulated users of a generated world, through the "
        "live HTTP service; the true effect beside the estimate",
    )
    p.add_argument("world", help="a folder written by `marketrec generate` (with ground_truth/)")
    p.add_argument(
        "--arm",
        action="append",
        metavar="NAME=MODEL",
        help="an arm served from a model folder (a `marketrec serve` is started for it, "
        "with a fresh SQLite store in OUT/stores/); repeat for each arm",
    )
    p.add_argument(
        "--url",
        action="append",
        metavar="NAME=URL",
        help="an arm already served at URL (e.g. with a Redis store)",
    )
    p.add_argument("--out", required=True, help="folder for exposures, events and the report")
    p.add_argument("--control", help="the control arm (default: the first given)")
    p.add_argument("--days", type=_positive_float, default=3.0)
    p.add_argument("--users", type=_positive_int, default=2_000)
    p.add_argument("--k", type=_positive_int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--start",
        type=_timestamp,
        help="simulated start (ISO 8601; default: where `marketrec split` cuts by default, "
        "the 0.8 quantile of event time)",
    )
    p.add_argument(
        "--experiments",
        help="assignment (TOML/JSON, as for serve --experiments; its first experiment's "
        "variants are the arms' names); default: the arms in equal shares",
    )
    p.add_argument(
        "--rollout",
        metavar="NAME",
        help="instead of an A/B split, a staged rollout of the second arm over the first: "
        "staging (internal users) on day 1, one region at 50 %% on day 2, everyone at 50 %% "
        "on day 3, completed from day 4; the guardrails (CTR, conversion) are checked every "
        "simulated day and roll it back when significantly worse",
    )
    p.add_argument(
        "--arm-settings",
        action="append",
        metavar="NAME=KEY=VALUE[,KEY=VALUE]",
        help="pipeline settings for every request of an --arm (candidates, "
        "diversity_strength, exploration_share): A/B tests of settings, e.g. "
        "--arm base=M --arm diverse=M --arm-settings diverse=diversity_strength=0.6",
    )
    p.add_argument("--internal-users", type=_positive_int, default=20)
    p.add_argument("--rollout-region", help="the region stage's region (default: the largest)")
    p.add_argument(
        "--one-service",
        action="store_true",
        help="with --rollout: serve every session from one `marketrec serve --rollouts` of "
        "the first arm that hosts the second arm's folder itself (the arms' own services "
        "still give the truth), and count the sessions it served as the rollout assigns",
    )
    p.set_defaults(run=cmd_simulate)

    p = sub.add_parser("evaluate", help="offline top-K metrics on a split folder")
    p.add_argument("split", help="folder written by `marketrec split` (train/ and test/)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model folder: recommend through it, then score")
    source.add_argument("--recs", help="recommendations Parquet (user_id, item_id, rank)")
    p.add_argument("--k", type=_positive_int, nargs="+", default=[10, 20, 100])
    p.add_argument("--json", help="write the metrics as JSON here")
    p.add_argument(
        "--min-rating",
        type=float,
        default=4.0,
        help="rating events count as targets from this value (default 4)",
    )
    p.add_argument(
        "--target-events",
        nargs="*",
        default=["purchase", "add_to_cart", "click"],
        help="event types that count as targets (default: purchase add_to_cart click)",
    )
    p.add_argument(
        "--all-events",
        action="store_true",
        help="every test event with an item is a target (implicit data)",
    )
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("models", help="list the available models and their parameters")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser(
        "demo",
        help="generate a marketplace, evaluate the baselines, train the two-stage model, serve it",
    )
    p.add_argument("--out", default="demo-output")
    p.add_argument("--users", type=_positive_int, default=20_000)
    p.add_argument("--items", type=_positive_int, default=3_000)
    p.add_argument("--days", type=_positive_int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--models",
        nargs="+",
        default=["popularity", "region-popularity", "itemknn", "ease", "als", "bpr"],
    )
    p.add_argument("--no-tune", action="store_true", help="use default hyper-parameters")
    p.add_argument(
        "--no-serve",
        action="store_true",
        help="stop after the evaluation (no two-stage model, no service)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        args.run(args)
    except MarketrecError as exc:
        _error_line(f"marketrec: error: {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _error_line("marketrec: interrupted")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        _error_line(
            f"marketrec: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback)"
        )
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ConfigError", "build_parser", "main"]
