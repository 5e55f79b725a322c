"""Mutation testing of the modules that hold the mathematics and the training schedule.

Runs mutmut 3 (https://github.com/boxed/mutmut) module by module: each module is
mutated in a fresh copy of the repository under a temporary folder (mutmut rewrites
the source it mutates, so it never runs in the working tree), against only the test
files that exercise it, so that a run fits a small machine. Writes the kill rate per
module, and every surviving mutant with its diff and the reason it survives, to
``benchmarks/results/mutation.md`` and ``mutation.json``.

Not part of CI (it takes hours on two cores). Usage::

    pip install 'mutmut>=3.8,<4'
    nice -n 19 python tools/mutation.py                  # every module, HEAD
    python tools/mutation.py --module pyro_vae/files.py  # one module (merged into the results)
    python tools/mutation.py --ref WORKTREE              # the uncommitted working tree
    python tools/mutation.py --sample 30 --seed 0        # a uniform random sample per module
    python tools/mutation.py --recheck --module pyro_vae/inference/bounds.py
        # after adding tests: re-run only that module's recorded survivors, at HEAD

``--sample N`` tests N mutants drawn uniformly (seeded) from each module's mutants and
reports the kill rate with its binomial standard error, for machines where every mutant
does not fit (a full run of all targets is about 2,300 mutants).

``--recheck`` is valid only while the module's source is the one the recorded run
mutated (mutant names are numbered along the source); the tool checks this.

A mutant is *killed* when a selected test fails (or times out) with it in place. A
survivor is either equivalent (no test can tell it from the original: the reason is
recorded in :data:`REASONS`) or a blind spot of the tests, to be closed with a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Target:
    """One module to mutate, the tests that run against it, and which functions count."""

    path: str
    tests: tuple[str, ...]
    #: mutmut mutant-name patterns (fnmatch) to run; empty: every function of the module.
    only: tuple[str, ...] = ()
    why: str = ""


TARGETS: tuple[Target, ...] = (
    Target(
        "pyro_vae/inference/bounds.py",
        (
            "tests/inference/test_bounds.py",
            "tests/inference/test_evaluation.py",
            "tests/inference/test_objectives.py",
            "tests/model/test_components.py",
            "tests/inference/test_gaps.py",
            # The closed-form checks of the densities (no NUTS, no subprocess).
            "tests/test_pyro_native.py::test_bounds_count_masked_and_scaled_sites_as_pyros_trace_elbo",
            "tests/test_pyro_native.py::test_model_densities_are_the_prior_and_likelihood_of_the_parts",
            "tests/posterior/test_posterior.py::test_predictive_and_prior_draws_follow_the_model",
            "tests/posterior/test_posterior.py::test_importance_resampling_matches_the_closed_form",
            "tests/posterior/test_posterior.py::test_log_marginal_is_exact_with_the_exact_posterior_as_proposal",
            "tests/posterior/test_posterior.py::test_gaps_match_their_closed_forms",
            "tests/inference/test_quadrature.py::test_guide_log_density_is_the_guides_own_normal",
        ),
        why="log-weights, ELBO, IWAE, chunked estimates, model densities",
    ),
    Target(
        "pyro_vae/inference/objectives.py",
        (
            "tests/inference/test_objective_terms.py",
            "tests/inference/test_objectives.py",
            "tests/inference/test_evaluation.py",
            "tests/training/test_loop.py",
        ),
        why="Trace_ELBO, mean-field ELBO, IWAE losses and their checks",
    ),
    Target(
        "pyro_vae/model/priors.py",
        ("tests/model/test_components.py", "tests/model/test_component_details.py"),
        why="p(z)",
    ),
    Target(
        "pyro_vae/model/guides.py",
        ("tests/model/test_components.py", "tests/model/test_vae.py", "tests/model/test_component_details.py"),
        why="q(z|x)",
    ),
    Target(
        "pyro_vae/model/likelihoods.py",
        ("tests/model/test_components.py", "tests/model/test_component_details.py"),
        why="p(x|z)",
    ),
    Target(
        "pyro_vae/training/loop.py",
        ("tests/training/test_loop.py", "tests/training/test_fit_details.py"),
        why="fit, the KL schedule, early stopping",
    ),
    Target(
        "pyro_vae/config.py",
        ("tests/training/test_loop.py",),
        only=("pyro_vae.config.xǁTrainConfigǁkl_weight__mutmut_*",),
        why="TrainConfig.kl_weight only (the KL schedule)",
    ),
    Target(
        "pyro_vae/data/transforms.py", ("tests/data/test_data.py", "tests/training/test_loop.py"), why="binarization"
    ),
    Target(
        "pyro_vae/files.py",
        ("tests/test_files.py", "tests/test_folder_checks.py", "tests/runs/test_checkpoint.py"),
        why="atomic writes, checksummed folders",
    ),
)

#: Surviving mutants that no test can kill, by mutant name, with the reason. A mutant
#: name is ``module.function__mutmut_N``; N follows the source, so this table belongs
#: to the commit the results name.
REASONS: dict[str, str] = {
    "pyro_vae.inference.bounds.x_collect_weighted__mutmut_1": (
        "equivalent: `z` and `out` are always set together, so `out is None` alone triggers the "
        "allocation whatever `z` starts as"
    ),
    "pyro_vae.inference.bounds.x_model_densities__mutmut_28": (
        "equivalent: a Pyro plate of size None is a broadcasting plate (size -1, no scaling); the "
        "conditioned z of shape (K, B, z_dim) gives it its K"
    ),
    "pyro_vae.inference.objectives.xǁTraceMeanFieldELBOǁ__init____mutmut_10": (
        "equivalent: one particle in a vectorized particle plate of size 1 gives the same draws and "
        "the same loss as no plate (checked: equal to the last bit for Trace_ELBO and TraceMeanField_ELBO)"
    ),
    "pyro_vae.inference.objectives.xǁTraceMeanFieldELBOǁ__init____mutmut_5": (
        "equivalent: particles drawn one after another instead of vectorized give the same estimator "
        "(here even the same draws and loss), only slower"
    ),
    "pyro_vae.inference.objectives.xǁTraceMeanFieldELBOǁcheck__mutmut_17": (
        "equivalent on a CPU-only machine: device None is the CPU, where the parameters are; only a "
        "model on a GPU could tell"
    ),
    "pyro_vae.training.loop.x_fit__mutmut_37": (
        "equivalent: `check_x` checks the shape only, and an empty slice of the validation rows has "
        "the same width as their first row"
    ),
    "pyro_vae.training.loop.x_fit__mutmut_104": (
        "equivalent on a CPU-only machine: without a device the probe rows stay where the rows are, "
        "the CPU, which is the model's device"
    ),
    "pyro_vae.training.loop.x_fit__mutmut_106": (
        "equivalent on a CPU-only machine: without a device the probe rows stay where the rows are, "
        "the CPU, which is the model's device"
    ),
    "pyro_vae.files.x_atomic_write_many__mutmut_47": (
        "equivalent: `durable=None` is falsy, as False is: the same renames, no directory fsync per file"
    ),
    "pyro_vae.files.x_atomic_write_many__mutmut_49": (
        "equivalent short of a power cut: a directory fsync after each rename instead of one after the "
        "last leaves the same files and manifest; only a crash of the machine could tell"
    ),
    "pyro_vae.files.xǁ_Tempǁ__init____mutmut_3": "equivalent: `done` is only read as `not tmp.done`; None is falsy",
    "pyro_vae.files.x__naming__mutmut_9": (
        "equivalent: when the error already names the path, OSError(errno, strerror, path) rebuilds it "
        "(Python picks the same subclass by errno), so rebuilding it always gives the same error"
    ),
    "pyro_vae.inference.objectives.x_check_compatible__mutmut_20": (
        "equivalent: an MLP probe built on 8 x 8 stand-in images (64 features) instead of 1 feature has the "
        "same prior and guide families, and the check asks only about the families"
    ),
    "pyro_vae.model.likelihoods.x__describe_bad__mutmut_2": (
        "equivalent: only the first entry is read, and the flattened (row, column) pairs of a 2-D mask "
        "start with the same first row as its rows that hold a bad value"
    ),
    "pyro_vae.training.loop.x_fit__mutmut_107": "equivalent: slice(None, 2) is slice(0, 2)",
    "pyro_vae.training.loop.x_fit__mutmut_38": (
        "equivalent: `check_x` checks the shape only, and two validation rows have the width of one"
    ),
    "pyro_vae.training.loop.x_fit__mutmut_79": (
        "equivalent in what is trained: prefetching only moves a batch's assembly to a background "
        "thread (the same rows in the same order); None turns it off, which is the CPU default anyway"
    ),
    "pyro_vae.training.loop.x_fit__mutmut_206": (
        "not killable by one process: world_size is 1, so dividing by it equals multiplying; the two-rank "
        "torchrun test in tests/training/test_distributed.py compares the reported loss with one process's "
        "and should kill it, but it was left out of the selection (a subprocess job) and not run against it"
    ),
    "pyro_vae.files.x_remove_files__mutmut_15": (
        "equivalent: without a manifest file, `_Manifest.load` returns None, which is what the skipped load gives"
    ),
    "pyro_vae.files.xǁ_Manifestǁload__mutmut_17": (
        "equivalent but for a manifest of exactly 1 MiB + 1 bytes: only that many bytes are read, and JSON "
        "cut short does not parse, so without the size test every larger manifest is refused all the same"
    ),
    "pyro_vae.inference.bounds.xǁ_Proposeǁ__init____mutmut_2": (
        "equivalent: wrapping a Pyro distribution in the torch adapter too (instead of only torch "
        "ones) changes nothing the bounds use: shapes, support, draws and log_prob are delegated"
    ),
}

#: Why a module of :data:`TARGETS` has no row in the results (written into mutation.md).
NOT_MEASURED: dict[str, str] = {}

#: How the recorded results were made, for mutation.md (they belong to the commit, as REASONS do).
NOTES: tuple[str, ...] = (
    "Every mutant of every module did not fit on the shared 2-core machine (about 2,300 mutants, hours),",
    "so `transforms.py` and `TrainConfig.kl_weight` were run whole and the other modules by seeded",
    "random samples (`--sample`, seed 0). Each module's first 25 were run, every survivor was given a",
    "test or a reason, the unexplained survivors were re-run with the new tests (`--recheck`), then the",
    "sample was grown to 50 (`--extend`) and the same done again; the source column records each step.",
    "",
    "The final rates above count mutants killed by tests written after seeing them. The rate on mutants",
    "no one had looked at is the second 25 of each sample, run after the first round of new tests:",
    "bounds 21/25, objectives 19/25, priors 23/25, guides 24/25, likelihoods 22/25, loop 20/25,",
    "files 18/25: 147/175 = 84.0 % (± 2.8), or 147/168 = 87.5 % leaving out the 7 of them found",
    "equivalent. That is the estimate of what the suite catches unseen, before the second round.",
    "",
    "Reproduced at 20b8f74 (`--sample 50 --seed 0`, fresh copies, the same mutants): priors 50/50 as",
    "recorded; objectives 46/50, not 47: `TraceMeanFieldELBO.__init__` mutant 5 (vectorize_particles=None),",
    "counted killed by a timeout on the loaded machine in the recorded run, survives when given time; it is",
    "equivalent (see its reason), so the score without equivalent mutants is 100 % either way.",
)

#: mutmut's exit codes, as its ``mutmut.stats.status_by_exit_code`` reads them.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


@dataclass
class ModuleResult:
    path: str
    tests: list[str]
    why: str
    statuses: dict[str, str] = field(default_factory=dict)
    survivors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Mutants of the module in all; more than ``total`` when only a sample was run.
    population: int = 0
    seed: int | None = None

    @property
    def total(self) -> int:
        return len(self.statuses)

    @property
    def killed(self) -> int:
        return sum(s in KILLED for s in self.statuses.values())

    @property
    def rate(self) -> float:
        return self.killed / self.total if self.total else float("nan")

    def to_dict(self) -> dict:
        counts: dict[str, int] = {}
        for status in self.statuses.values():
            counts[status] = counts.get(status, 0) + 1
        return {
            "module": self.path,
            "what": self.why,
            "tests": self.tests,
            "mutants": self.total,
            "population": self.population or self.total,
            "sample_seed": self.seed,
            "killed": self.killed,
            "kill_rate": round(self.rate, 4),
            # Binomial standard error of the rate over the module's mutants (0: all were run).
            "kill_rate_se": _standard_error(self.killed, self.total, self.population or self.total),
            "by_status": counts,
            "survivors": self.survivors,
            "seconds": round(self.seconds, 1),
        }


def _standard_error(killed: int, tested: int, population: int) -> float:
    """Standard error of killed / tested as an estimate over ``population`` (finite population)."""
    if tested <= 1 or tested >= population:
        return 0.0
    p = killed / tested
    return round(math.sqrt(p * (1 - p) / tested * (population - tested) / (population - 1)), 4)


def _mutant_names(copy: Path, target: Target) -> list[str]:
    """Every mutant name of ``target`` (mutmut's generation step alone, no tests run)."""
    generate = (
        "import mutmut.__main__ as m; from mutmut.utils.file_utils import copy_src_dir, setup_source_paths; "
        "m.set_mutant_under_test('mutant_generation'); copy_src_dir(); setup_source_paths(); m.create_mutants(1)"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(copy / "mutants"), os.environ.get("PYTHONPATH", "")]))
    )
    subprocess.run([sys.executable, "-c", generate], cwd=copy, env=env, check=True, capture_output=True)
    from fnmatch import fnmatch

    meta = json.loads((copy / "mutants" / (target.path + ".meta")).read_text())
    return sorted(
        name for name in meta["exit_code_by_key"] if not target.only or any(fnmatch(name, p) for p in target.only)
    )


def _copy_repository(ref: str, into: Path) -> str:
    """The repository at ``ref`` (a commit, or WORKTREE for the files as they are) in ``into``."""
    into.mkdir(parents=True)
    if ref == "WORKTREE":
        files = (
            subprocess.run(
                ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            .stdout.decode()
            .split("\0")
        )
        for name in filter(None, files):
            source = ROOT / name
            if source.is_file():
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, into / name)
        return "working tree at " + _git("rev-parse", "--short", "HEAD") + " (with uncommitted changes)"
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return _git("rev-parse", "--short", ref)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _configure(copy: Path, target: Target) -> None:
    """Point mutmut at one module and its tests (a [tool.mutmut] table in the copy's pyproject)."""
    table = {
        "source_paths": ["pyro_vae"],
        "only_mutate": [target.path],
        "pytest_add_cli_args_test_selection": list(target.tests),
        # No doctests, no cache, no plugins of the machine: the selected test files only.
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-o", "addopts=", "-W", "ignore::DeprecationWarning"],
        "also_copy": ["examples", "benchmarks"],
        # The tests' own timings vary on a shared machine: be patient before calling a timeout.
        "timeout_multiplier": 20.0,
        "timeout_constant": 5.0,
    }
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in table.items()]
    with open(copy / "pyproject.toml", "a") as f:
        f.write("\n".join(lines) + "\n")


def _mutmut(copy: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Tests that start a subprocess (the CLI, examples) import the mutated package too.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy / "mutants"), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    # `mutmut run`, not `python -m mutmut`: the latter re-executes mutmut's __main__.
    # Given mutant names, mutmut 3.8 looks up each one's tests with [] and fails on a
    # function no test reaches: such names are left out of the lookup (they are then
    # reported `no tests`, as in a full run).
    launch = (
        "import sys, mutmut.__main__ as m; f = m.tests_for_mutant_names; "
        "m.tests_for_mutant_names = lambda names: f([n for n in names "
        "if m.state().tests_by_mangled_function_name.get(m.mangled_name_from_mutant_name(n))]); "
        "sys.argv[0] = 'mutmut'; m.cli()"
    )
    command = [sys.executable, "-c", launch, *args]
    return subprocess.run(command, cwd=copy, env=env, text=True, capture_output=capture)


def _statuses(copy: Path, target: Target) -> dict[str, str]:
    from fnmatch import fnmatch

    from mutmut.stats import status_by_exit_code

    meta = json.loads((copy / "mutants" / (target.path + ".meta")).read_text())
    return {
        name: status_by_exit_code[code]
        for name, code in sorted(meta["exit_code_by_key"].items())
        if not target.only or any(fnmatch(name, pattern) for pattern in target.only)
    }


def _survivor(copy: Path, name: str, status: str) -> dict[str, str]:
    diff = _mutmut(copy, "show", name, capture=True).stdout.strip()
    return {
        "mutant": name,
        "status": status,
        "reason": REASONS.get(name, "not yet explained"),
        "diff": "\n".join(
            line for line in diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
        ),
    }


def run_target(
    target: Target,
    ref: str,
    max_children: int,
    keep: bool,
    names: tuple[str, ...] = (),
    sample: int | None = None,
    seed: int = 0,
    skip: int = 0,
) -> tuple[ModuleResult, str]:
    """Mutate ``target`` in a copy at ``ref``: every mutant, only ``names``, or a random ``sample``.

    With ``skip``, the mutants of the seed's sample of that size are left out (already
    run): the sample grows from ``skip`` to ``sample`` mutants.
    """
    work = Path(tempfile.mkdtemp(prefix="pyro-vae-mutation-"))
    copy = work / "repo"
    version = _copy_repository(ref, copy)
    _configure(copy, target)
    # mutmut copies the package here; it must exist before Python starts, or the import
    # system caches the missing folder on PYTHONPATH and loads the unmutated package.
    (copy / "mutants").mkdir()
    start = time.perf_counter()
    population = 0
    if sample is not None:
        every = _mutant_names(copy, target)
        population = len(every)
        if sample < population:
            chosen = set(random.Random(seed).sample(every, sample))
            done = set(random.Random(seed).sample(every, skip))
            # random.sample draws one mutant after another: a larger sample holds the smaller.
            assert done <= chosen, "the smaller sample is not part of the larger one"
            names = tuple(sorted(chosen - done))
    print(f"== {target.path}: {', '.join(target.tests)} (copy in {copy})", flush=True)
    result = _mutmut(copy, "run", "--max-children", str(max_children), *(names or target.only))
    if result.returncode != 0:
        raise SystemExit(f"mutmut failed on {target.path} (exit {result.returncode}); the copy is in {copy}")
    module = ModuleResult(target.path, list(target.tests), target.why, seconds=time.perf_counter() - start)
    module.statuses = _statuses(copy, target)
    module.population = population or len(module.statuses)
    module.seed = seed if sample is not None and sample < population else None
    if names:
        module.statuses = {name: module.statuses[name] for name in names}
    module.survivors = [
        _survivor(copy, name, status) for name, status in module.statuses.items() if status not in KILLED
    ]
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return module, version


def extend_target(
    target: Target, ref: str, row: dict, sample: int, seed: int, max_children: int, keep: bool
) -> tuple[dict, str]:
    """Grow a recorded sample of ``target`` to ``sample`` mutants (same seed, same module source)."""
    source = row["source"].split()[0]
    if _git("rev-parse", f"{source}:{target.path}") != _git("rev-parse", f"{ref}:{target.path}"):
        raise SystemExit(f"{target.path} changed between {source} (the recorded sample) and {ref}: run a new sample")
    if row.get("sample_seed") != seed or sample <= row["mutants"]:
        raise SystemExit(
            f"--extend: {target.path}'s sample has seed {row.get('sample_seed')} and {row['mutants']} mutants"
        )
    module, version = run_target(target, ref, max_children, keep, sample=sample, seed=seed, skip=row["mutants"])
    if module.population != row["population"]:
        raise SystemExit(f"{target.path}: {module.population} mutants now, {row['population']} in the recorded sample")
    counts = dict(row["by_status"])
    for status in module.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    tested, killed = row["mutants"] + module.total, row["killed"] + module.killed
    print(f"   {module.killed}/{module.total} of the added mutants killed; {killed}/{tested} in all", flush=True)
    return {
        **row,
        "tests": list(target.tests),
        "mutants": tested,
        "killed": killed,
        "kill_rate": round(killed / tested, 4),
        "kill_rate_se": _standard_error(killed, tested, row["population"]),
        "by_status": counts,
        "survivors": sorted(row["survivors"] + module.survivors, key=lambda s: s["mutant"]),
        "seconds": round(row["seconds"] + module.seconds, 1),
        "source": f"{row['source']}; grown to {tested} at {version}",
        "command": f"python tools/mutation.py --sample {tested} --seed {seed} --extend --module {target.path}",
    }, version


def recheck_target(target: Target, ref: str, row: dict, max_children: int, keep: bool) -> tuple[dict, str]:
    """Re-run a recorded module's survivors at ``ref`` (new tests); the killed stay killed.

    Survivors already explained as equivalent (in :data:`REASONS`) are not re-run: no
    test can kill them. Valid only where the module's source at ``ref`` is the one the
    recorded run mutated, so that the mutant names mean the same mutants.
    """
    source = row["source"].split()[0]
    if _git("rev-parse", f"{source}:{target.path}") != _git("rev-parse", f"{ref}:{target.path}"):
        raise SystemExit(
            f"{target.path} changed between {source} (the recorded run) and {ref}: "
            f"run it whole (python tools/mutation.py --module {target.path} --ref {ref})"
        )
    names = tuple(s["mutant"] for s in row["survivors"] if s["mutant"] not in REASONS)
    kept = [{**s, "reason": REASONS[s["mutant"]]} for s in row["survivors"] if s["mutant"] in REASONS]
    version = _git("rev-parse", "--short", ref)
    seconds = 0.0
    statuses: dict[str, str] = {}
    survivors = list(kept)
    if names:
        module, version = run_target(target, ref, max_children, keep, names)
        statuses, seconds = module.statuses, module.seconds
        survivors += module.survivors
    newly_killed = sum(s in KILLED for s in statuses.values())
    counts = dict(row["by_status"])
    for s in row["survivors"]:
        if s["mutant"] in statuses:
            counts[s["status"]] -= 1
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    killed = row["killed"] + newly_killed
    population = row.get("population", row["mutants"])
    new_row = {
        **row,
        "what": target.why,
        "tests": list(target.tests),
        "killed": killed,
        "kill_rate": round(killed / row["mutants"], 4),
        "kill_rate_se": _standard_error(killed, row["mutants"], population),
        "by_status": {k: v for k, v in counts.items() if v},
        "survivors": sorted(survivors, key=lambda s: s["mutant"]),
        "seconds": round(row["seconds"] + seconds, 1),
        "source": f"{row['source']}; its {len(names)} unexplained survivors re-run at {version}",
        "command": f"python tools/mutation.py --recheck --module {target.path}",
    }
    print(f"   {newly_killed} of {len(names)} re-run survivors killed; {killed}/{row['mutants']} in all", flush=True)
    return new_row, version


def _previous_rows(out: Path) -> dict[str, dict]:
    previous = out / "mutation.json"
    if not previous.is_file():
        return {}
    return {row["module"]: row for row in json.loads(previous.read_text())["modules"]}


def write_results(modules: list[ModuleResult | dict], version: str, command: str, out: Path) -> None:
    """Write mutation.json and mutation.md; modules not run now keep their earlier rows."""
    from importlib.metadata import version as package_version

    rows = {}
    for m in modules:
        row = m if isinstance(m, dict) else {**m.to_dict(), "source": version, "command": command}
        rows[row["module"]] = row
    for path, row in _previous_rows(out).items():
        rows.setdefault(path, row)
    for row in rows.values():  # reasons written since a row was recorded
        for survivor in row["survivors"]:
            survivor["reason"] = REASONS.get(survivor["mutant"], survivor["reason"])
    order = [t.path for t in TARGETS]
    rows = dict(sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    total = sum(r["mutants"] for r in rows.values())
    killed = sum(r["killed"] for r in rows.values())
    report = {
        "tool": f"mutmut {package_version('mutmut')}",
        "command": (
            "nice -n 19 python tools/mutation.py [--module PATH ...] [--max-children N] "
            "[--sample N --seed S [--extend]] [--recheck]"
        ),
        "total": {"mutants": total, "killed": killed, "kill_rate": round(killed / total, 4) if total else None},
        "modules": list(rows.values()),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutation.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = [
        "# Mutation testing",
        "",
        f"{report['tool']}, each module mutated in a copy of the repository at the commit its row names",
        "and run against only the tests listed (`nice -n 19 python tools/mutation.py`, OMP_NUM_THREADS=1).",
        "A mutant is killed when one of those tests fails (or times out) with it in place; `no tests`",
        "means no listed test reaches the mutated function, and counts as a survivor.",
        "",
        "Where `mutants` reads `n of N`, a uniform random sample of n of the module's N mutants was",
        "run (`--sample`, seed in the JSON) and the kill rate is an estimate, given with its standard",
        "error (binomial, finite population); where all n are killed that error is 0 and the rule of",
        "three gives the 95 % lower bound, about 1 - 3/n (88 % for n = 25, 94 % for n = 50).",
        "",
        "The last column leaves out the survivors explained below as equivalent (no test can tell",
        "them from the original): killed / (mutants - equivalent), the usual mutation score.",
        "",
        "| module | what | source | tests | mutants | killed | kill rate | equivalent | score |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    equivalent_total = 0
    for r in rows.values():
        equivalent = sum(s["reason"].startswith("equivalent") for s in r["survivors"])
        equivalent_total += equivalent
        score = f"{100 * r['killed'] / (r['mutants'] - equivalent):.1f} %" if r["mutants"] > equivalent else "-"
        tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in r["tests"])
        population = r.get("population", r["mutants"])
        tested = f"{r['mutants']} of {population}" if population > r["mutants"] else f"{r['mutants']}"
        rate = f"{100 * r['kill_rate']:.1f} %"
        if r.get("kill_rate_se"):
            rate += f" ± {100 * r['kill_rate_se']:.1f}"
        lines.append(
            f"| `{r['module']}` | {r['what'].replace('|', '&#124;')} | {r['source']} | {tests} | {tested} | {r['killed']} | {rate} "
            f"| {equivalent} | {score} |"
        )
    if total:
        lines.append(
            f"| **all measured** (mutants tested, pooled) | | | | {total} | {killed} | **{100 * killed / total:.1f} %** "
            f"| {equivalent_total} | **{100 * killed / (total - equivalent_total):.1f} %** |"
        )
    missing = [t for t in TARGETS if t.path not in rows]
    if missing:
        lines += ["", "## Not measured", ""]
        lines += [f"- `{t.path}` ({t.why}): {NOT_MEASURED.get(t.path, 'no run recorded yet')}" for t in missing]
    if NOTES:
        lines += ["", "## How these numbers were made", "", *NOTES]
    lines += ["", "## Surviving mutants", ""]
    survivors = [s for r in rows.values() for s in r["survivors"]]
    if not survivors:
        lines.append("None.")
    for s in survivors:
        lines += [f"- `{s['mutant']}` ({s['status']}): {s['reason']}", "", "  ```diff"]
        lines += [f"  {line}" for line in s["diff"].splitlines()] + ["  ```", ""]
    (out / "mutation.md").write_text("\n".join(lines).rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", help="mutate only this module (repeatable); default: all")
    parser.add_argument("--ref", default="HEAD", help="commit to test, or WORKTREE for the files as they are")
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of mutation.md and mutation.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies (to inspect mutants)")
    parser.add_argument("--sample", type=int, help="run only this many mutants per module, drawn at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="with --sample: grow each module's recorded sample (same seed) to that size",
    )
    parser.add_argument(
        "--recheck", action="store_true", help="re-run only the recorded survivors of each module (after adding tests)"
    )
    args = parser.parse_args(argv)
    try:
        import mutmut  # noqa: F401
    except ImportError:
        parser.error("mutmut is not installed: pip install 'mutmut>=3.8,<4'")
    targets = [t for t in TARGETS if not args.module or t.path in args.module]
    unknown = set(args.module or ()) - {t.path for t in targets}
    if unknown:
        parser.error(f"unknown module(s) {sorted(unknown)}; choose from {[t.path for t in TARGETS]}")
    modules: list[ModuleResult | dict] = []
    version = ""
    previous = _previous_rows(args.out)
    for target in targets:
        if args.recheck:
            if target.path not in previous:
                parser.error(f"--recheck: {target.path} has no recorded run in {args.out / 'mutation.json'}")
            row, version = recheck_target(target, args.ref, previous[target.path], args.max_children, args.keep)
            modules.append(row)
            continue
        if args.extend:
            if target.path not in previous or args.sample is None:
                parser.error(f"--extend needs --sample and a recorded sample of {target.path}")
            row, version = extend_target(
                target, args.ref, previous[target.path], args.sample, args.seed, args.max_children, args.keep
            )
            modules.append(row)
            continue
        module, version = run_target(target, args.ref, args.max_children, args.keep, sample=args.sample, seed=args.seed)
        modules.append(module)
        print(
            f"   {module.killed}/{module.total} killed ({100 * module.rate:.1f} %) in {module.seconds:.0f} s",
            flush=True,
        )
    command = "python tools/mutation.py" + "".join(f" --module {m}" for m in args.module or ())
    if args.sample is not None:
        command += f" --sample {args.sample} --seed {args.seed}"
    write_results(modules, version, command, args.out)
    print(f"results in {args.out / 'mutation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
