"""Mutation testing of the modules that hold the mathematics and the training schedule.

Runs mutmut 3 (https://github.com/boxed/mutmut) module by module: each module is
mutated in a fresh copy of the repository under a temporary folder (mutmut rewrites
the source it mutates, so it never runs in the working tree), against only the test
files that exercise it, so that a run fits a small machine. Writes the kill rate per
module, and every surviving mutant with its diff and the reason it survives, to
``benchmarks/results/mutation.md`` and ``mutation.json``.

Not part of CI (it takes an hour or more on two cores). Usage::

    pip install 'mutmut>=3.8,<4'
    nice -n 10 python tools/mutation.py                  # every module, HEAD
    python tools/mutation.py --module pyro_vae/files.py  # one module
    python tools/mutation.py --ref WORKTREE              # the uncommitted working tree

A mutant is *killed* when a selected test fails (or times out) with it in place. A
survivor is either equivalent (no test can tell it from the original: the reason is
recorded in :data:`REASONS`) or a blind spot of the tests, to be closed with a test.
"""

from __future__ import annotations

import argparse
import json
import os
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
        ),
        why="log-weights, ELBO, IWAE, chunked estimates, model densities",
    ),
    Target(
        "pyro_vae/inference/objectives.py",
        ("tests/inference/test_objectives.py", "tests/inference/test_evaluation.py", "tests/training/test_loop.py"),
        why="Trace_ELBO, mean-field ELBO, IWAE losses and their checks",
    ),
    Target("pyro_vae/model/priors.py", ("tests/model/test_components.py",), why="p(z)"),
    Target("pyro_vae/model/guides.py", ("tests/model/test_components.py", "tests/model/test_vae.py"), why="q(z|x)"),
    Target("pyro_vae/model/likelihoods.py", ("tests/model/test_components.py",), why="p(x|z)"),
    Target("pyro_vae/training/loop.py", ("tests/training/test_loop.py",), why="fit, the KL schedule, early stopping"),
    Target(
        "pyro_vae/config.py",
        ("tests/training/test_loop.py",),
        only=("pyro_vae.config.xǁTrainConfigǁkl_weight__mutmut_*",),
        why="TrainConfig.kl_weight only (the KL schedule)",
    ),
    Target("pyro_vae/data/transforms.py", ("tests/data/test_data.py", "tests/training/test_loop.py"), why="binarization"),
    Target("pyro_vae/files.py", ("tests/test_files.py", "tests/runs/test_checkpoint.py"), why="atomic writes"),
)

#: Surviving mutants that no test can kill, by mutant name, with the reason. A mutant
#: name is ``module.function__mutmut_N``; N follows the source, so this table belongs
#: to the commit the results name.
REASONS: dict[str, str] = {}

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
            "killed": self.killed,
            "kill_rate": round(self.rate, 4),
            "by_status": counts,
            "survivors": self.survivors,
            "seconds": round(self.seconds, 1),
        }


def _copy_repository(ref: str, into: Path) -> str:
    """The repository at ``ref`` (a commit, or WORKTREE for the files as they are) in ``into``."""
    into.mkdir(parents=True)
    if ref == "WORKTREE":
        files = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, check=True, capture_output=True,
        ).stdout.decode().split("\0")
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
    command = [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.argv[0] = 'mutmut'; cli()", *args]
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


def run_target(target: Target, ref: str, max_children: int, keep: bool) -> tuple[ModuleResult, str]:
    work = Path(tempfile.mkdtemp(prefix="pyro-vae-mutation-"))
    copy = work / "repo"
    version = _copy_repository(ref, copy)
    _configure(copy, target)
    # mutmut copies the package here; it must exist before Python starts, or the import
    # system caches the missing folder on PYTHONPATH and loads the unmutated package.
    (copy / "mutants").mkdir()
    start = time.perf_counter()
    print(f"== {target.path}: {', '.join(target.tests)} (copy in {copy})", flush=True)
    result = _mutmut(copy, "run", "--max-children", str(max_children), *target.only)
    if result.returncode != 0:
        raise SystemExit(f"mutmut failed on {target.path} (exit {result.returncode}); the copy is in {copy}")
    module = ModuleResult(target.path, list(target.tests), target.why, seconds=time.perf_counter() - start)
    module.statuses = _statuses(copy, target)
    for name, status in module.statuses.items():
        if status in KILLED:
            continue
        diff = _mutmut(copy, "show", name, capture=True).stdout.strip()
        module.survivors.append({
            "mutant": name,
            "status": status,
            "reason": REASONS.get(name, "not yet explained"),
            "diff": "\n".join(line for line in diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))),
        })
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return module, version


def write_results(modules: list[ModuleResult], version: str, command: str, out: Path) -> None:
    """Write mutation.json and mutation.md; modules not run now keep their earlier rows."""
    from importlib.metadata import version as package_version

    rows = {m.path: {**m.to_dict(), "source": version, "command": command} for m in modules}
    previous = out / "mutation.json"
    if previous.is_file():
        for row in json.loads(previous.read_text())["modules"]:
            rows.setdefault(row["module"], row)
    order = [t.path for t in TARGETS]
    rows = dict(sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    total = sum(r["mutants"] for r in rows.values())
    killed = sum(r["killed"] for r in rows.values())
    report = {
        "tool": f"mutmut {package_version('mutmut')}",
        "command": "nice -n 10 python tools/mutation.py [--module PATH ...]",
        "total": {"mutants": total, "killed": killed, "kill_rate": round(killed / total, 4) if total else None},
        "modules": list(rows.values()),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutation.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    sources = sorted({r["source"] for r in rows.values()})
    lines = [
        "# Mutation testing",
        "",
        f"{report['tool']}, each module mutated in a copy of the repository at {', '.join(sources)} and run",
        "against only the test files listed (`nice -n 10 python tools/mutation.py`, OMP_NUM_THREADS=1,",
        "one mutant at a time). A mutant is killed when one of those tests fails (or times out) with it",
        "in place.",
        "",
        "| module | what | tests | mutants | killed | kill rate |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows.values():
        tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in r["tests"])
        lines.append(
            f"| `{r['module']}` | {r['what']} | {tests} | {r['mutants']} | {r['killed']} | {100 * r['kill_rate']:.1f} % |"
        )
    if total:
        lines.append(f"| **all** | | | {total} | {killed} | **{100 * killed / total:.1f} %** |")
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
    args = parser.parse_args(argv)
    try:
        import mutmut  # noqa: F401
    except ImportError:
        parser.error("mutmut is not installed: pip install 'mutmut>=3.8,<4'")
    targets = [t for t in TARGETS if not args.module or t.path in args.module]
    unknown = set(args.module or ()) - {t.path for t in targets}
    if unknown:
        parser.error(f"unknown module(s) {sorted(unknown)}; choose from {[t.path for t in TARGETS]}")
    modules, version = [], ""
    for target in targets:
        module, version = run_target(target, args.ref, args.max_children, args.keep)
        modules.append(module)
        print(f"   {module.killed}/{module.total} killed ({100 * module.rate:.1f} %) in {module.seconds:.0f} s", flush=True)
    command = "python tools/mutation.py" + "".join(f" --module {m}" for m in args.module or ())
    write_results(modules, version, command, args.out)
    print(f"results in {args.out / 'mutation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
