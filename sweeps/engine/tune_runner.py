"""Ray and Tune for a sweep: join or start Ray, one Tuner per group (restored on `--resume`), nothing else.

Tune's param space is the trials' experiment settings. A table sweep's trials are fixed in advance: the settings
they share are the param space's constants and `PlanSearcher` (a Tune `Searcher`) hands out what differs, in plan
order. A search gives Tune the axes as its own primitives: `tune.grid_search` for the grid, `tune.choice` for
random draws and for Optuna / HyperOpt, whose every point is repeated once per seed (Tune's `Repeater`, which
reports the mean over seeds back to the searcher).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import ResultGrid
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Repeater, Searcher
from ray.tune.stopper import Stopper

from ap_core.cycle_keys import cycle_key
from ap_core.plugins import PLUGINS_VARIABLE, absolute_entries
from sweeps.engine import cycle_store, packing, preflight, state_signing
from sweeps.engine.cycle_signer import CycleStoreSigner
from sweeps.engine.cycle_store import claimed_elsewhere
from sweeps.engine.expected_cost import dense_rungs, rungs_for
from sweeps.engine.full_disk import StopWhenStorageFull
from sweeps.engine.options import AUTO_GPUS, SearchOptions, SweepError, SweepOptions
from sweeps.engine.progress import OverallProgress
from sweeps.engine.report import trial_outcomes
from sweeps.engine.retention import CheckpointRetention
from sweeps.engine.spec import SweepPlan, TrialCatalog, searched_trial_name
from sweeps.engine.tracking import ParentRun
from sweeps.engine.trial_artifacts import write_trial_artifacts
from sweeps.engine.trial_logger import MlflowTrialLogger
from trainables.pruning_trial import TRAINED_EPOCHS, train_trial
from trainables.tune_config import REUSE, TRIAL_NAME, trial_config
from trainables.worker_setup import SETUP_HOOK

# Searches are judged on the held-out validation split (the hparam_grid presets set val_fraction).
SEARCH_METRIC = "val_acc"
# A data-parallel trial's own process only relays its workers' reports (Ray Train reserves the workers): no CPU,
# but the memory to hold one cycle's checkpoint on its way to storage (Tune cannot place a trial asking nothing).
RELAY_MEMORY = 512 * 2**20


def run_experiments(
    plan: SweepPlan,
    options: SweepOptions,
    search: SearchOptions | None,
    parent: ParentRun | None,
    datasets: dict[str, Any],
    experiments: Mapping[str, str],
    runtime: Mapping[str, Any],
    sweep_tags: dict[str, str],
    continuing: bool,
    store: Path | None = None,
) -> list[ResultGrid]:
    """Run (or resume) each group's Tune experiment in turn on the Ray `connect` joined; stops after a group that
    Ctrl-C interrupted. A table sweep shares cycles through the cycle `store` (None: reuse off)."""
    # Tune keeps each checkpoint's whole result in the trial's saved state, one per cycle; with this it keeps the
    # checkpoint's path only (nothing here reads a checkpoint's metrics: they are in the trial's results).
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    dataset_refs = {key: ray.put(data) for key, data in datasets.items()}
    datasets.clear()  # the object store holds them now; free the driver's copies
    catalog = plan.catalog()
    store = store if plan.trials else None  # a searched point's dense cycle is planned for by a staged search only
    per_worker = {"CPU": options.cpus_per_trial, "GPU": options.gpus_per_trial}
    replicated = options.workers_per_trial > 1
    grids = []
    for group in plan.groups:
        path = experiments[group]
        shared, points = planned_points(plan, group) if plan.trials else ({}, [])
        trainable = tune.with_resources(
            tune.with_parameters(
                train_trial,
                runtime=dict(runtime),
                shared=shared,
                datasets=dataset_refs,
                write_artifacts=write_trial_artifacts,
                cycle_store=str(store or ""),
                workers=options.workers_per_trial,
                resources_per_worker=per_worker,
                dense_stage=plan.dense_stage,
            ),
            {"cpu": 0, "memory": RELAY_MEMORY}
            if replicated
            else {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
        )
        if continuing and tune.Tuner.can_restore(path):
            print(f"resuming {path}")
            state_signing.verify(path)  # nothing unpickled unless this user's sweep wrote it (issue #15.1)
            state_signing.protect(path)
            grid = tune.Tuner.restore(path, trainable=trainable).fit()
        else:
            tuner = _tuner(plan, group, points, trainable, catalog, options, search, parent, path, sweep_tags, store)
            state_signing.sign_files(path, ["tuner.pkl"])  # written by Tuner(); the rest is signed as Tune saves it
            state_signing.protect(path)
            grid = tuner.fit()
        grids.append(grid)
        if any(outcome == "unfinished" for _, outcome in trial_outcomes(grid, grid.experiment_path)):
            break  # Tune caught Ctrl-C and returned: do not start the next group
    return grids


def worker_runtime_env() -> dict[str, Any]:
    """Every worker of the sweep's job runs SETUP_HOOK first (no SystemExit tracebacks from Ray's own SIGTERM at
    shutdown) and loads the driver's plugins, also on nodes started without them and from the trial's folder."""
    plugins = absolute_entries()
    return {"worker_process_setup_hook": SETUP_HOOK} | ({"env_vars": {PLUGINS_VARIABLE: plugins}} if plugins else {})


def connect(options: SweepOptions, plan: SweepPlan, datasets: Mapping[str, Any]) -> float:
    """Join the cluster (or start a private local Ray) and refuse trials it can never schedule; before any write.

    Returns the GPUs per trial: the option's own, or what `--gpus-per-trial auto` resolves to where the trials run.
    The caller shuts Ray down (`ray.shutdown()`), also when this raises.
    """
    workers = options.workers_per_trial
    if not options.address:  # checked before starting anything: a local Ray has what this machine has
        gpus_per_trial = _resolve_gpus(options, lambda: packing.resolve_locally(plan, options, datasets))
        preflight.check_resources(
            preflight.local_resources(options.num_cpus),
            options.cpus_per_trial,
            gpus_per_trial,
            "the local Ray",
            workers,
        )
        # "local": a fresh instance even when `ray start` left a cluster address on this machine
        ray.init(
            address="local",
            num_cpus=options.num_cpus or None,
            include_dashboard=False,
            runtime_env=worker_runtime_env(),
        )
        return gpus_per_trial
    preflight.check_ray_address(options.address)
    try:
        ray.init(address=options.address, runtime_env=worker_runtime_env())
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SweepError(f"cannot join the Ray cluster at --address {options.address!r}: {_first_line(err)}") from None
    gpus_per_trial = _resolve_gpus(options, lambda: packing.resolve_on_cluster(plan, options, datasets))
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    where = f"the cluster at {options.address}"
    preflight.check_resources(nodes, options.cpus_per_trial, gpus_per_trial, where, workers)
    return gpus_per_trial


def _resolve_gpus(options: SweepOptions, measure: Callable[[], float]) -> float:
    """The GPUs per trial (per worker): as asked, or `auto`'s: measured shares for one-process trials, a whole
    GPU per data-parallel worker where there are GPUs (workers of one trial cannot share one)."""
    if options.gpus_per_trial != AUTO_GPUS:
        return options.gpus_per_trial
    gpus = measure()
    if options.workers_per_trial > 1:
        return 1.0 if gpus > 0 else 0.0
    return gpus


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _tuner(
    plan: SweepPlan,
    group: str,
    points: list[dict[str, Any]],
    trainable: Any,
    catalog: TrialCatalog,
    options: SweepOptions,
    search: SearchOptions | None,
    parent: ParentRun | None,
    path: str,
    sweep_tags: dict[str, str],
    store: Path | None,
) -> tune.Tuner:
    if plan.trials:  # a table sweep, or a stage of a staged search
        trials = plan.trials_of(group)
        # Tune creates as many trials as its searcher's ConcurrencyLimiter allows: enough to fill every free slot
        # and queue as many again, so a slot that frees up is refilled at once, while the rest of the plan waits
        # in the searcher as plain data instead of as thousands of Tune trials.
        workers = options.workers_per_trial
        room = trials_at_once(options.cpus_per_trial * workers, options.gpus_per_trial * workers)
        # One trial waiting to start keeps the cluster busy; a data-parallel trial waits inside Ray Train instead.
        limit = options.max_concurrent or (room if workers > 1 else 2 * room)
        configs = [t.config for t in trials]
        dense_keys = tuple(cycle_key(c, 0) for c in configs)
        last_keys = tuple(cycle_key(c, c.pruning.cycles) for c in configs)
        searcher = PlanSearcher(points, store, dense_keys, last_keys, sweep_tags["sweep"])
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=limit)
        param_space, num_samples = {}, len(points)  # the group's shared settings come with the trainable
        cycles = [1 if plan.dense_stage else t.config.pruning.cycles + 1 for t in trials]
        namer = TrialNamer()
    else:
        assert search is not None
        param_space, search_alg, num_samples = search_setup(plan, group, search)
        cycles = [plan.search_group(group).base.pruning.cycles + 1] * (plan.points_per_group * plan.seeds)
        searched = plan.search_group(group)
        namer = TrialNamer(searched.stem, tuple(plan.search.axes), numbered=plan.search_mode != "grid")
    callbacks: list[Any] = [CheckpointRetention(), StopWhenStorageFull()]  # a full disk stops the sweep, resumably
    if store is not None:  # before the logger: an entry is signed as soon as its trial reports it
        callbacks.append(CycleStoreSigner(store, sweep_tags["sweep"], parent.run_id if parent else ""))
    if parent is not None:
        callbacks.append(MlflowTrialLogger(parent, catalog, sweep_tags))
    if options.progress:
        callbacks.append(OverallProgress(sum(cycles), group or path.rpartition("/")[2], catalog, plan.dense_stage))
    storage_path, _, name = path.rpartition("/")
    scheduler = _scheduler(plan, group, search) if not plan.trials or plan.dense_stage else None
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            num_samples=num_samples,
            scheduler=scheduler,
            metric=SEARCH_METRIC if scheduler else None,
            mode="max" if scheduler else None,
            max_concurrent_trials=(options.max_concurrent or None) if not plan.trials else None,
            reuse_actors=True,  # a worker that finished one trial starts the next: torch stays imported
            trial_name_creator=namer,
            trial_dirname_creator=dataclasses.replace(namer, with_id=True),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            stop=AfterDenseCycle() if plan.dense_stage else None,  # stage one: the dense cycle only
            # No num_to_keep: Tune would snapshot the whole experiment's state every time a trial deletes a
            # checkpoint, a cost that grows with the number of trials. CheckpointRetention deletes old ones instead,
            # at Tune's own (adaptive) snapshots, so --resume always finds the checkpoint it was told of.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            verbose=1 if options.verbose else 0,  # by default our progress bar is the one live display
        ),
    )


def planned_points(plan: SweepPlan, group: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A planned group's shared settings, and per trial its Tune config: its name and the settings that differ.

    The name travels as data on the trial (Tune stores its namer with every trial: it must stay small), and the
    shared settings once, with the trainable: Tune copies a trial's config into its saved state five times over.
    """
    trials = plan.trials_of(group)
    shared, points = split_settings([t.config.experiment_settings() for t in trials])
    return shared, [{**point, TRIAL_NAME: t.name} for point, t in zip(points, trials, strict=True)]


def split_settings(settings: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The settings every trial shares (Tune's constants) and, per trial, the ones that differ."""
    shared = {k: v for k, v in settings[0].items() if all(s[k] == v for s in settings[1:])}
    return shared, [{k: v for k, v in s.items() if k not in shared} for s in settings]


def search_setup(plan: SweepPlan, group: str, search: SearchOptions) -> tuple[dict[str, Any], Any, int]:
    """Param space, search algorithm and Tune's num_samples of one searched group."""
    assert plan.search is not None
    axes = plan.search.axes
    constants = {k: v for k, v in plan.search_group(group).base.experiment_settings().items() if k not in axes}
    space = {**constants, **plan.search.tune_space(plan.search_mode)}
    points = plan.points_per_group
    if plan.search_mode in ("grid", "random"):
        space["seed"] = tune.grid_search(list(range(1, plan.seeds + 1)))
        # random: one draw per sample, kept the same across the seed grid, so every point runs on every seed
        generator = BasicVariantGenerator(constant_grid_search=True, random_state=search.search_seed)
        return space, generator, 1 if plan.search_mode == "grid" else points
    del space["seed"]  # the Repeater's index is the seed (trainables.tune_config.trial_config)
    searcher = _searcher(plan.search_mode, search.search_seed)
    return space, Repeater(searcher, repeat=plan.seeds, set_index=True), points * plan.seeds


def _searcher(mode: str, seed: int) -> Searcher:
    if mode == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed)
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch(random_state_seed=seed)


def _scheduler(plan: SweepPlan, group: str, search: SearchOptions | None) -> ASHAScheduler | None:
    if search is None or search.scheduler == "none":
        return None
    assert plan.search is not None
    if plan.dense_stage:  # stage one: every point's dense cycle, judged after every epoch
        configs = [t.config for t in plan.trials_of(group)]
        rungs = dense_rungs(search, configs[0].pruning.cycles, tuple(c.training.epochs for c in configs))
    else:
        base = plan.search_group(group).base
        rungs = rungs_for(search, base.pruning.cycles, plan.search.axes.get("epochs", (base.training.epochs,)))
    return EpochASHA(
        time_attr=TRAINED_EPOCHS,
        max_t=rungs.max_t,
        grace_period=rungs.grace,
        reduction_factor=rungs.reduction,
    )


class EpochASHA(ASHAScheduler):
    """ASHA whose rungs are in training epochs: the epochs per cycle are searched (80 to 500 in the paper's grid),
    so rungs in cycles would compare a long schedule after six times the compute of a short one."""

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return super().on_trial_result(tune_controller, trial, with_trained_epochs(trial.config, result))

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, with_trained_epochs(trial.config, result))


def with_trained_epochs(config: Mapping[str, Any], result: dict) -> dict:
    """The result with the epochs its point has trained by then (ASHA's time, not Tune's count of results): (cycle
    + 1) x its epochs per cycle at the end of a cycle; a stage-one trial's per-epoch results carry their own."""
    if TRAINED_EPOCHS in result or "cycle" not in result or "epochs" not in config:
        return result
    return {**result, TRAINED_EPOCHS: (int(result["cycle"]) + 1) * int(config["epochs"])}


class AfterDenseCycle(Stopper):
    """Stops a stage-one trial at its first result that ends a cycle (its per-epoch results have no `cycle`)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return "cycle" in result

    def stop_all(self) -> bool:
        return False


class PlanSearcher(Searcher):
    """Hands Tune a table sweep's planned trials in plan order, each dense cycle trained once; its state is JSON.

    With a cycle store, a trial whose cycles are stored (its last one, or its dense cycle 0) is handed out with the
    verified entry to start from (`REUSE`). The first trial of a dense cycle that is not stored trains it (its
    owner); later trials sharing it are held back, without holding a slot, until the owner has reported cycle 0,
    then handed out to start from the stored entry. An owner that fails passes the dense cycle to the next one.
    """

    # Class defaults: a searcher pickled by a release without the store (a sweep resumed across it) has neither.
    store: Path | None = None
    dense_keys: tuple[str, ...] = ()
    last_keys: tuple[str, ...] = ()
    sweep = ""
    created: set[int] = set()  # noqa: RUF012  (replaced, never changed in place)

    def __init__(
        self,
        points: list[dict[str, Any]],
        store: Path | None = None,
        dense_keys: tuple[str, ...] = (),
        last_keys: tuple[str, ...] = (),
        sweep: str = "",
    ) -> None:
        super().__init__()
        self.points = points
        self.store, self.dense_keys, self.last_keys, self.sweep = store, dense_keys, last_keys, sweep
        self.next_index = 0
        self.held: dict[str, list[int]] = {}  # dense key in training -> trials waiting for it
        self.owners: dict[str, str] = {}  # trial id -> the dense key it trains for the others
        self.ready: list[str] = []  # dense keys whose waiting trials are to be handed out again

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.store is not None:
            for dense in self.ready:  # released only now: their entries were signed after the owner's result
                cycle_store.release(self.store, dense, self.sweep)
            # dense cycles another sweep trains: stored now, or their driver is gone
            waiting = [d for d, held in self.held.items() if held and d not in self.owners.values()]
            self.ready += [
                d for d in waiting if d not in self.ready and not claimed_elsewhere(self.store, d, self.sweep)
            ]
        while self.ready:  # trials whose dense cycle is stored now (or whose owner failed)
            dense = self.ready[0]
            if not self.held.get(dense):
                self.ready.pop(0)
                self.held.pop(dense, None)
            elif (point := self._hand_out(self.held[dense].pop(0), trial_id)) is not None:
                return point
            else:  # held again: another of them owns it now (its owner failed); the rest wait for that one
                self.ready.pop(0)
        while self.next_index < len(self.points):
            self.next_index += 1
            if self.next_index - 1 in self.created:
                continue
            if (point := self._hand_out(self.next_index - 1, trial_id)) is not None:
                return point
        return None if any(self.held.values()) else Searcher.FINISHED

    def _hand_out(self, index: int, trial_id: str) -> dict[str, Any] | None:
        """Trial `index`'s config (with the stored cycles it starts from), or None if it waits for its dense cycle."""
        point = json.loads(json.dumps(self.points[index]))  # a private copy for Tune to merge
        if self.store is None:
            return point
        dense = self.dense_keys[index]
        reuse = cycle_store.verified(self.store, self.last_keys[index]) or cycle_store.verified(self.store, dense)
        if reuse is not None:
            return {**point, REUSE: reuse.to_dict()}
        if dense in self.owners.values() or not cycle_store.claim(self.store, dense, self.sweep):
            self.held.setdefault(dense, []).append(index)  # trained by a trial of this sweep, or of another
            return None
        self.owners[trial_id] = dense
        return point

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if "cycle" in result:  # its first result that ends a cycle is cycle 0, stored (signed before the next suggest)
            self._release(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._release(trial_id)

    def _release(self, trial_id: str) -> None:
        if (dense := self.owners.pop(trial_id, None)) is not None and dense not in self.ready:
            self.ready.append(dense)

    def save(self, checkpoint_path: str) -> None:
        state = {"next_index": self.next_index, "held": self.held, "owners": self.owners, "ready": self.ready}
        with open(checkpoint_path, "w") as file:
            json.dump(state, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as file:
            state = json.load(file)
        self.next_index = int(state["next_index"])
        created = _created_trials(Path(checkpoint_path).parent)
        self.held = {
            str(k): [int(i) for i in v if self.points[int(i)].get(TRIAL_NAME) not in created]
            for k, v in state.get("held", {}).items()
        }
        self.owners = {str(k): str(v) for k, v in state.get("owners", {}).items()}
        self.ready = [str(k) for k in state.get("ready", [])]
        # Tune uploads its trials and this state as separate files: a driver killed between the two leaves trials
        # this state has not handed out yet. They are Tune's already: handing them out again would run them twice.
        self.created = {i for i, point in enumerate(self.points) if point.get(TRIAL_NAME) in created}


def _created_trials(experiment_dir: Path) -> set[str]:
    """The names of the planned trials Tune's saved state holds (JSON, already verified as this user's)."""
    names: set[str] = set()
    for path in experiment_dir.glob("experiment_state-*.json"):
        try:
            trials = json.loads(path.read_text())["trial_data"]
            names |= {str(json.loads(state)["config"].get(TRIAL_NAME)) for state, _ in trials}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a damaged file: Tune's own restore reports it
    return names


def trials_at_once(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the Ray cluster joined has room for side by side (at least 1)."""
    resources = ray.cluster_resources()
    fits = [int(resources.get("CPU", 0) // cpus_per_trial)] if cpus_per_trial > 0 else []
    fits += [int(resources.get("GPU", 0) // gpus_per_trial)] if gpus_per_trial > 0 else []
    return max(1, min(fits, default=1))


@dataclasses.dataclass(frozen=True)
class TrialNamer:
    """Tune's trial name (`mlp-gp-ap-seed1`) or folder name (plus Tune's trial id), from the trial alone.

    A planned trial carries its name in its config (`TRIAL_NAME`); a searched point's is its group's stem, the
    point and the seed. Tune pickles this namer into every trial's saved state, so it holds a few strings only:
    never the plan, whose size would then multiply with the number of trials.
    """

    stem: str = ""
    axes: tuple[str, ...] = ()
    numbered: bool = False
    with_id: bool = False

    def __call__(self, trial: Trial) -> str:
        name = trial.config.get(TRIAL_NAME) or searched_trial_name(
            self.stem, self.axes, trial_config(trial.config), trial.trial_id, self.numbered
        )
        return f"{name}_{trial.trial_id}" if self.with_id else name
