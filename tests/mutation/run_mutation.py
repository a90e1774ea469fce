"""Mutation testing of the pipeline and the sinks, one module at a time.

Run from the repository root (the compiled extension built in place)::

    python tests/mutation/run_mutation.py                 # every module, today's tests
    python tests/mutation/run_mutation.py buffers flush   # some modules
    python tests/mutation/run_mutation.py --tests-from 606b0ef^1 buffers   # an older suite

The mutants are always of today's ``daqd`` (the Python modules of
``daqd/pipeline`` and ``daqd/sinks``; the compiled ``daqd._spead*.so`` is copied
as it is).  The tests are today's ``tests/`` or, with ``--tests-from REV``, the
``tests/`` of a commit, so that one mutation run measures two suites.  mutmut 3
(the ``[tool.mutmut]`` table of ``pyproject.toml``) runs each mutant against the
tests that executed the mutated function, among the test files that aim at
that module (``TESTS``), one worker under ``nice -n 19``, in a scratch directory
per suite and module (``/tmp/daqd-mutation/<suite>/<module>``) that keeps its
results between runs (delete it to start again).  At the end it prints, per
module, the mutants killed and surviving, and the names of the survivors
(``mutmut show NAME`` in the module's scratch directory prints a survivor's diff).
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The modules worth it first: the buffers, flush policies, write-ahead log and
# records every stream uses, then the sinks' common part and file formats.
PRIORITY = [
    "daqd/pipeline/buffers.py",
    "daqd/pipeline/flush.py",
    "daqd/pipeline/wal.py",
    "daqd/pipeline/records.py",
    "daqd/sinks/base.py",
    "daqd/sinks/paths.py",
    "daqd/sinks/binary.py",
    "daqd/sinks/text.py",
]

# The test files that aim at each module: mutmut picks, among them, the tests that
# executed the mutated function.  Files missing from an older suite are left out
# (that is what the older suite lacks); a module not named here gets every test of
# tests/pipeline and tests/sinks.
TESTS = {
    "daqd/pipeline/buffers.py": ["pipeline/test_buffers.py", "pipeline/test_buffer_props.py",
                                 "pipeline/test_flush.py", "pipeline/test_sink_isolation.py",
                                 "pipeline/test_wal.py", "pipeline/test_wal_props.py",
                                 "pipeline/test_wal_resync.py", "pipeline/test_wal_no_copy.py"],
    "daqd/pipeline/flush.py": ["pipeline/test_flush.py", "pipeline/test_buffer_props.py",
                               "pipeline/test_sink_isolation.py",
                               "pipeline/test_flusher_requests.py", "test_config.py"],
    "daqd/pipeline/wal.py": ["pipeline/test_wal.py", "pipeline/test_wal_props.py",
                             "pipeline/test_wal_resync.py"],
    "daqd/pipeline/records.py": ["pipeline/test_buffers.py", "sinks/test_sink_formats.py",
                                 "pipeline/test_wal.py", "pipeline/test_wal_props.py",
                                 "pipeline/test_wal_no_copy.py"],
    "daqd/sinks/base.py": ["sinks/test_sink_files.py", "sinks/test_sink_errors.py",
                           "sinks/test_sink_rotation_props.py"],
    "daqd/sinks/paths.py": ["sinks/test_sink_files.py", "sinks/test_paths.py",
                            "test_config.py"],
    "daqd/sinks/binary.py": ["sinks/test_sink_formats.py", "sinks/test_sink_files.py",
                             "sinks/test_sink_observations.py", "sinks/test_binary_format.py"],
    "daqd/sinks/text.py": ["sinks/test_sink_formats.py", "sinks/test_sink_files.py",
                           "sinks/test_sink_observations.py", "test_config.py",
                           "sinks/test_text_format.py"],
}

# A mutant's outcome, as `mutmut results --all true` prints it.
RESULT_LINE = re.compile(r"^\s+(?P<name>\S+): (?P<status>.+?)\s*$")


def all_modules():
    """Return every mutated module, the priority ones first.

    Returns
    -------
    list of str
        Paths relative to the repository root.
    """
    rest = sorted(
        str(p.relative_to(ROOT))
        for d in ("daqd/pipeline", "daqd/sinks")
        for p in (ROOT / d).glob("*.py")
        if p.name != "__init__.py"
    )
    return PRIORITY + [m for m in rest if m not in PRIORITY]


def resolve_module(name):
    """Return the path of a module given by path or by bare name.

    Parameters
    ----------
    name : str
        ``daqd/pipeline/wal.py``, ``daqd.pipeline.wal`` or ``wal``.

    Returns
    -------
    str
        The module's path relative to the repository root.
    """
    modules = all_modules()
    candidates = [
        m for m in modules
        if name in (m, m[:-3].replace("/", "."), Path(m).stem)
    ]
    if len(candidates) != 1:
        sys.exit(f"run_mutation: {name!r} names {len(candidates)} of the modules {modules}")
    return candidates[0]


def prepare(workdir, tests_from, module):
    """Fill a scratch directory: today's daqd, a suite, mutmut set to one module.

    Parameters
    ----------
    workdir : Path
        The scratch directory; kept if it exists (mutmut reuses its results).
    tests_from : str or None
        A commit whose ``tests/`` to use, or None for the working tree's.
    module : str
        The module to mutate, its path relative to the repository root.
    """
    if (workdir / "pyproject.toml").exists():
        return
    workdir.mkdir(parents=True, exist_ok=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants", ".hypothesis")
    # daqd/data is a link to config/: copied as its target, as the package ships it.
    shutil.copytree(ROOT / "daqd", workdir / "daqd", ignore=skip)
    if tests_from is None:
        shutil.copytree(ROOT / "tests", workdir / "tests", ignore=skip)
    else:
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "-C", str(ROOT), "archive", tests_from, "tests"],
                           stdout=archive, check=True)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(workdir, filter="data")
    selection = [f"tests/{t}" for t in TESTS.get(module, ["pipeline", "sinks"])
                 if (workdir / "tests" / t).exists()]
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = re.sub(r"(?m)^only_mutate = .*$", f"only_mutate = {json.dumps([module])}",
                       pyproject)
    pyproject = re.sub(r"(?m)^pytest_add_cli_args_test_selection = .*$",
                       f"pytest_add_cli_args_test_selection = {json.dumps(selection)}",
                       pyproject)
    (workdir / "pyproject.toml").write_text(pyproject)
    # Made before Python starts: a path entry that does not exist yet is cached as
    # empty, and the tests would import an installed daqd instead of the mutants.
    (workdir / "mutants").mkdir()


def run_module(workdir):
    """Run mutmut in a prepared scratch directory, one worker, lowest priority.

    Parameters
    ----------
    workdir : Path
        The scratch directory of one module and one suite.

    Returns
    -------
    int
        mutmut's exit status.
    """
    env = dict(os.environ)
    # The mutated copy must be the only daqd the tests import, in the test
    # process and in the processes it starts (the daemon, the WAL driver).
    env["PYTHONPATH"] = str(workdir.resolve() / "mutants")
    command = ["nice", "-n", "19", sys.executable, "-m", "mutmut", "run", "--max-children", "1"]
    return subprocess.run(command, cwd=workdir, env=env).returncode


def results(workdir):
    """Read every mutant's outcome from the scratch directory.

    Parameters
    ----------
    workdir : Path
        The scratch directory of a finished (or partial) run.

    Returns
    -------
    dict
        Outcome by mutant name.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=workdir, env=env, capture_output=True, text=True, check=True,
    ).stdout
    return {
        m["name"]: m["status"]
        for m in map(RESULT_LINE.match, out.splitlines()) if m
    }


def module_of(mutant):
    """Return the dotted module of a mutant's name.

    Parameters
    ----------
    mutant : str
        e.g. ``daqd.pipeline.wal.xǁWalǁappend__mutmut_3``.

    Returns
    -------
    str
        e.g. ``daqd.pipeline.wal``.
    """
    return re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]


def report(outcomes, modules, show_survivors=True):
    """Print the survival per module and the survivors' names.

    Parameters
    ----------
    outcomes : dict
        Outcome by mutant name, from :func:`results`.
    modules : list of str
        The modules to report, paths relative to the repository root.
    show_survivors : bool
        Whether to list each survivor by name.
    """
    by_module = collections.defaultdict(collections.Counter)
    survivors = collections.defaultdict(list)
    for name, status in outcomes.items():
        by_module[module_of(name)][status] += 1
        if status in ("survived", "no tests"):
            survivors[module_of(name)].append(name)
    print(f"{'module':28} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} "
          f"{'no tests':>8} {'untested':>8} {'survival':>8}")
    for module in modules:
        dotted = module[:-3].replace("/", ".")
        c = by_module.get(dotted)
        if not c:
            print(f"{dotted:28} {'not run':>7}")
            continue
        untested = c["not checked"]
        tried = sum(c.values()) - untested
        lost = c["survived"] + c["no tests"]
        rate = f"{100 * lost / tried:.1f}%" if tried else "-"
        print(f"{dotted:28} {sum(c.values()):7} {c['killed']:6} {c['timeout']:7} "
              f"{c['survived']:8} {c['no tests']:8} {untested:8} {rate:>8}")
    if show_survivors:
        for module in modules:
            dotted = module[:-3].replace("/", ".")
            for name in sorted(survivors.get(dotted, [])):
                print(f"  {outcomes[name]:9} {name}")


def main(argv=None):
    """Run the mutation testing the command line asks for and print the report.

    Parameters
    ----------
    argv : list of str, optional
        The arguments, without the program's name.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*",
                        help="modules to mutate (path, dotted or bare name); default all")
    parser.add_argument("--tests-from", metavar="REV",
                        help="use the tests/ of this commit (default: the working tree's)")
    parser.add_argument("--workdir", type=Path,
                        help="scratch directory of the suite (default /tmp/daqd-mutation/<suite>)")
    parser.add_argument("--report-only", action="store_true",
                        help="print the results of earlier runs, run nothing")
    parser.add_argument("--quiet", action="store_true", help="no list of survivors")
    args = parser.parse_args(argv)
    modules = [resolve_module(m) for m in args.modules] or all_modules()
    suite = re.sub(r"[^\w.-]", "_", args.tests_from) if args.tests_from else "worktree"
    base = args.workdir or Path("/tmp/daqd-mutation") / suite
    outcomes = {}
    for module in modules:
        workdir = base / Path(module).stem
        if not args.report_only:
            prepare(workdir, args.tests_from, module)
            status = run_module(workdir)
            if status != 0:
                sys.exit(f"run_mutation: mutmut failed on {module} (exit {status})")
        if (workdir / "mutants").is_dir():
            outcomes.update(results(workdir))
    report(outcomes, modules, show_survivors=not args.quiet)

if __name__ == "__main__":
    main()
