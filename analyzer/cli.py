"""The command line: `diagnose`, `reproduce-run` and the `postmortem` group. Heavy modules are imported lazily."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import click

from analyzer import __version__
from analyzer.errors import InputError

FORMATS = ("md", "html", "json", "junit")
LEVELS = ("critical", "warning", "info", "never")
EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2


class UserError(click.ClickException):
    """Bad input or usage: one line on stderr, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        click.echo(f"error: {_visible(self.format_message())}", err=True)


def _visible(text: object) -> str:
    """Text for the terminal with a non-UTF-8 file name's bytes as `\\xNN` (see report.format.visible_bytes)."""
    from analyzer.report.format import visible_bytes

    return visible_bytes(str(text))


class _OneLineUsage:
    """Click's usage errors (a bad option value, an unknown option or command, a missing argument) as one line,
    `error: <message>`, exit 2, like every other error; click would print a usage block around it. --help and a bare
    `postmortem` (help, as click shows it) are unchanged."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line_usage():
            return super().make_context(info_name, args, parent=parent, **extra)


@contextlib.contextmanager
def _one_line_usage():
    try:
        yield
    except click.UsageError as exc:
        if isinstance(exc, _NO_ARGS_IS_HELP):  # click shows the help here: that is no error to shorten
            raise
        raise UserError(exc.format_message()) from None


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class OneLineCommand(_OneLineUsage, click.Command):
    pass


class OneLineGroup(_OneLineUsage, click.Group):
    command_class = OneLineCommand

    def resolve_command(self, ctx, args):
        with _one_line_usage():  # "No such command"
            return super().resolve_command(ctx, args)


def reports_errors(func: Callable) -> Callable:
    """Turn InputError into a one-line message with exit 2, and never show a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            raise UserError(str(exc)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except BrokenPipeError:  # `diagnose ... | head`: the reader left; that is not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_OK)
        except Exception as exc:  # a bug of ours: still one line, with a way to get the traceback
            if os.environ.get("POSTMORTEM_DEBUG"):
                raise
            raise UserError(f"internal error: {type(exc).__name__}: {exc} "
                            "(set POSTMORTEM_DEBUG=1 for the traceback)") from None

    return wrapper


def _split_list(values: tuple[str, ...]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {value}: expected NAME.PARAM=VALUE")
        out[key.strip()] = raw.strip()
    return out


# --- diagnose ----------------------------------------------------------------------------------------------------

@click.command(name="diagnose", cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
# readable=False: an unreadable RUN_DIR or --out is ours to report in one line (click's check prints a usage block)
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(readable=False))
@click.option("--out", type=click.Path(path_type=Path, readable=False),
              help="Where reports go (default: RUN_DIR/postmortem/, or ./postmortem/NAME/ when RUN_DIR is read-only; "
              "one sub-folder per run when several).")
@click.option("--format", "formats", default="md,html,json", show_default=True,
              help="Comma-separated: md, html, json, junit.")
@click.option("--json", "as_json", is_flag=True, help="Print findings.json to stdout and write nothing else.")
@click.option("--fail-on", type=click.Choice(LEVELS), default="critical", show_default=True,
              help="Exit 1 when a finding is at or above this severity.")
@click.option("--select", multiple=True, metavar="NAMES", help="Run only these detectors (names or codes).")
@click.option("--ignore", multiple=True, metavar="NAMES", help="Skip these detectors (names or codes).")
@click.option("--set", "sets", multiple=True, metavar="NAME.PARAM=V", help="Override a detector parameter.")
@click.option("--recursive", is_flag=True, help="Treat RUN_DIR as a folder of runs (a sweep); write an index.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Runs diagnosed in parallel with --recursive.")
@click.version_option(__version__, prog_name="postmortem")
@reports_errors
def diagnose_command(run_dirs, out, formats, as_json, fail_on, select, ignore, sets, recursive, jobs):
    """Diagnose the training run(s) in RUN_DIR: find what went wrong, from which step, why, and what to change."""
    if "" in run_dirs:  # Path("") is ".": an unset shell variable must not diagnose the current folder
        raise InputError("RUN_DIR is an empty string")
    run_dirs = tuple(Path(p) for p in run_dirs)
    chosen = _split_list((formats,))
    unknown = sorted(set(chosen) - set(FORMATS))
    if unknown:
        raise InputError(f"--format: unknown format(s) {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
    options = dict(select=_split_list(select), ignore=_split_list(ignore), overrides=_parse_sets(sets))
    if len(run_dirs) == 1 and not recursive:  # a large metrics file parses while the detectors import
        from analyzer import prefetch

        prefetch.start(run_dirs[0])
    from analyzer.diagnose import choose, parse_overrides

    choose(options["select"], options["ignore"])  # usage errors before any reading
    parse_overrides(options["overrides"])

    runs = _expand(run_dirs, recursive)
    # In a sweep, a folder that is not a run (notes, a data folder) or whose input is broken must not stop the
    # others: it is skipped, said on stderr and listed in the index. A run named on its own still fails with exit 2.
    results = _diagnose_all(runs, options, jobs, skip_bad_input=recursive)
    skipped = [(run_dir, result.reason) for run_dir, result in zip(runs, results) if isinstance(result, _Skip)]
    for run_dir, reason in skipped:
        click.echo(f"skipped {_visible(run_dir)}: {_visible(reason)}", err=True)
    kept = [(run_dir, result) for run_dir, result in zip(runs, results) if not isinstance(result, _Skip)]
    if not kept:
        raise InputError("--recursive: no run folders inside", path=run_dirs[0])
    runs, results = [run_dir for run_dir, _ in kept], [result for _, result in kept]
    diagnoses = [diagnosis for _, diagnosis in results]
    if as_json:
        _print_json(diagnoses)
    else:
        several = len(runs) > 1 or recursive
        entries = []
        for run_dir, (run, diagnosis) in zip(runs, results):
            target = _out_dir(run_dir, out, several)
            _write(run, diagnosis, target, chosen, fail_on, step_summary=not several)
            entries.append((run_dir.name, diagnosis, target))
        skipped_names = [(run_dir.name, reason) for run_dir, reason in skipped]
        if several and out is not None:
            _write_index(entries, out, skipped_names)
        if several:
            from analyzer.report.summary import sweep_summary

            _append_step_summary(lambda: sweep_summary(
                [(name, diagnosis, str(target)) for name, diagnosis, target in entries], skipped_names))
    failing = fail_on != "never" and any(_fails(d, fail_on) for d in diagnoses)
    sys.exit(EXIT_FINDINGS if failing else EXIT_OK)


def _expand(run_dirs: tuple[Path, ...], recursive: bool) -> list[Path]:
    for path in run_dirs:
        if not path.exists():
            raise InputError("no such file or directory", path=path)
    if not recursive:
        return list(run_dirs)
    runs = []
    for root in run_dirs:
        if not root.is_dir():
            raise InputError("--recursive needs a folder of runs", path=root)
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                          and p.name != "postmortem")
        runs.extend(children)
    if not runs:
        raise InputError("--recursive: no run folders inside", path=run_dirs[0])
    return runs


def _progress(label: str):
    """A progress line on stderr once reading has taken more than a second, on a terminal only."""
    start = time.monotonic()
    shown = [False]

    def report(done: int, total: int) -> None:
        if not sys.stderr.isatty() or time.monotonic() - start < 1.0:
            return
        width = 24
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\rreading {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        shown[0] = True
        if done >= total:
            sys.stderr.write("\r" + " " * (len(label) + width + 24) + "\r")

    return report


class _Skip(NamedTuple):
    """A sweep's folder that was not diagnosed, and why (the InputError, its path relative to the folder)."""

    reason: str


def _diagnose_one(run_dir: Path, options: dict, skip_bad_input: bool = False):
    from analyzer.diagnose import diagnose_run
    from analyzer.ingest import read_run

    try:
        run = read_run(run_dir, progress=_progress(run_dir.name))
        return run, diagnose_run(run, **options)
    except InputError as exc:
        if not skip_bad_input:
            raise
        return _Skip(_reason(exc, run_dir))


def _reason(exc: InputError, run_dir: Path) -> str:
    """The error without the run folder's own path (the skip line names it): 'metrics.jsonl:3: ...', or the message."""
    where = exc.path
    if where is not None:
        try:
            where = Path(where).relative_to(run_dir).as_posix()
        except ValueError:
            pass
        if where == ".":
            where = None
    return " ".join(str(InputError(exc.message, where, exc.line)).split())


def _diagnose_all(runs: list[Path], options: dict, jobs: int, skip_bad_input: bool = False):
    if jobs <= 1 or len(runs) <= 1:
        return [_diagnose_one(r, options, skip_bad_input) for r in runs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: forking a process that holds pyarrow/torch thread pools can deadlock the child.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_diagnose_one, runs, [options] * len(runs), [skip_bad_input] * len(runs)))


def _print_json(diagnoses: list) -> None:
    """One findings.json document, or a JSON list of them when several runs were diagnosed."""
    from analyzer.findings import to_dict, to_json

    from analyzer.report.format import visible_bytes_json

    if len(diagnoses) == 1:  # the same text as findings.json, non-UTF-8 file names included
        click.echo(visible_bytes_json(to_json(diagnoses[0], __version__)), nl=False)
        return
    import json

    docs = [to_dict(d, __version__) for d in diagnoses]
    click.echo(visible_bytes_json(json.dumps(docs, indent=2, ensure_ascii=False, allow_nan=False)))


def _out_dir(run_dir: Path, out: Path | None, several: bool) -> Path:
    name = run_dir.resolve().name
    if out is not None:
        target = out / name if several else out
        if run_dir.is_dir() and target.resolve() == run_dir.resolve():
            # the run dir is the user's: reports written there would replace any file of theirs of the same name
            raise InputError("--out is the run directory itself; choose another folder (the default is "
                             "RUN_DIR/postmortem)", path=target)
        return target
    home = run_dir if run_dir.is_dir() else run_dir.parent
    if _writable(home):
        return home / "postmortem"
    return Path.cwd() / "postmortem" / name


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _fails(diagnosis, level: str) -> bool:
    from analyzer.findings import Severity

    return bool(diagnosis.at_or_above(Severity(level)))


def _color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _write(run, diagnosis, target: Path, formats: list[str], fail_on: str, step_summary: bool = True) -> None:
    from analyzer.report import github_summary, terminal_summary, write_reports

    if target.exists() and not target.is_dir():  # never replace a file of the user's with a report folder
        raise InputError("cannot write reports here: a file of that name exists (choose a folder with --out)",
                         path=target)
    import shutil

    tty = sys.stdout.isatty()
    width = max(MIN_WIDTH, shutil.get_terminal_size().columns if tty else 120)  # CI logs are wide
    # On a terminal every line fits its width (a split pane is narrow); a log file keeps each fact on one line.
    click.echo(run_overview(run, width if tty else None))
    click.echo(terminal_summary(diagnosis, color=_color(), width=width, wrap=tty))
    with _writing(target):
        written = write_reports(run, diagnosis, target, formats, fail_on)
    if written:
        click.echo(f"reports: {', '.join(_visible(p) for p in written)}")
    if step_summary:  # a sweep writes one summary for all its runs, at the end
        _append_step_summary(lambda: github_summary(diagnosis, artifact_hint=str(target)))


def _append_step_summary(text: Callable[[], str]) -> None:
    """Append markdown to the file $GITHUB_STEP_SUMMARY names (GitHub Actions shows it on the run's page)."""
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with _writing(Path(summary_file)), open(summary_file, "a", encoding="utf-8") as fh:
            fh.write(_visible(text()))


@contextlib.contextmanager
def _writing(target: Path):
    """An output folder or file we cannot write (read-only, under a file, gone) is bad usage: one line, exit 2."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"cannot write reports: {exc.strerror or exc}", path=exc.filename or target) from None


def _write_index(entries, out: Path, skipped=()) -> None:
    from analyzer.report import write_index

    with _writing(out):
        written = write_index(entries, out, skipped)
    for path in written:
        click.echo(f"index: {_visible(path)}")


MIN_WIDTH = 60  # narrower terminals wrap our lines themselves
OVERVIEW_INDENT = "      "  # continuation lines of an overview fact sit under its text, not under its label


OVERVIEW_HPARAMS = ("lr", "batch_size", "grad_accum", "world_size", "max_grad_norm", "warmup_steps", "warmup_ratio",
                    "weight_decay", "temperature", "precision", "optimizer", "max_steps")


def run_overview(run, width: int | None = None) -> str:
    """What ingest found, in a few lines: formats, metrics with point counts, steps, checkpoints, events.

    With a width, each line is wrapped to it; without, each fact stays on one line (a log file, grep)."""
    counts = run.row_counts()  # every point, all ranks and segments
    ranks = run.scalars["rank"].to_numpy()
    several = {}
    if len(ranks) and ranks.min() != ranks.max():  # say where a count adds up several processes' series
        several = {m: int(n) for m, n in run.scalars.groupby("metric", sort=True)["rank"].nunique().items() if n > 1}
    metrics = ", ".join(f"{name} ({count}" + (f" over {several[name]} ranks" if name in several else "") + ")"
                        for name, count in sorted(counts.items()))
    kinds = {}
    for event in run.events:
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
    lines = [
        f"run {run.name}: {', '.join(run.formats) or 'no format'}; steps {run.first_step}-{run.last_step}, "
        f"{len(run.scalars)} points" + (f"; status {run.status}" if run.status else ""),
        f"  metrics: {metrics or 'none'}",
    ]
    if run.hparams:
        from analyzer.run import HPARAM_ALIASES

        # the settings the advice is about first, then the others the detectors know: a HF run's 120
        # TrainingArguments in name order would show `activation_checkpointing=False` and hide the lr
        known = set(HPARAM_ALIASES.values())
        shown = sorted(run.hparams.items(), key=lambda item: (
            OVERVIEW_HPARAMS.index(item[0]) if item[0] in OVERVIEW_HPARAMS else len(OVERVIEW_HPARAMS),
            item[0] not in known))[:12]
        more = f" (+{len(run.hparams) - 12} more)" if len(run.hparams) > 12 else ""
        from analyzer.report.format import PATCH_DIGITS, number  # the reports' notation: lr=3e-5, not 3e-05

        lines.append("  hparams: " + ", ".join(f"{k}={_short(number(hp.value, PATCH_DIGITS))}" for k, hp in shown)
                     + more)
    if run.checkpoints:
        lines.append(f"  checkpoints: {len(run.checkpoints)} (" + ", ".join(
            c.path for c in run.checkpoints[:4]) + (", ..." if len(run.checkpoints) > 4 else "") + ")")
    if kinds:
        lines.append("  events: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    from analyzer.report.terminal import blind_spot_lines

    lines.extend(blind_spot_lines([spot.message for spot in run.blind_spots], short=width is not None))
    if run.notes:
        lines.append(f"  notes: {len(run.notes)} (e.g. {run.notes[0].file}: {run.notes[0].message})")
    lines = [_terminal_safe(line) for line in lines]
    if width is not None:
        import textwrap

        lines = [wrapped for line in lines for wrapped in textwrap.wrap(
            line, width, subsequent_indent=OVERVIEW_INDENT, break_on_hyphens=False, drop_whitespace=True,
            initial_indent="") or [line]]
    return "\n".join(lines)


def _terminal_safe(line: str) -> str:
    """A line of log-derived text that cannot drive the terminal (escape sequences, bidi overrides), indent kept."""
    from analyzer.report.terminal import clean

    return line[:len(line) - len(line.lstrip(" "))] + clean(line)


def _short(value, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- reproduce-run -------------------------------------------------------------------------------------------------

@click.command(name="reproduce-run", cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="New run dir (default: ./postmortem/reproduce/NAME, "
              "or NAME-fixed with --apply-fixes; never inside RUN_DIR).")
@click.option("--apply-fixes", is_flag=True, help="Diagnose RUN_DIR, apply its recommendations, compare before/after.")
@click.option("--max-steps", type=click.IntRange(1), help="Stop after this many steps.")
@click.option("--nproc", type=click.IntRange(1, 16), help="Processes (torch.distributed, gloo).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@reports_errors
def reproduce_command(run_dir, out, apply_fixes, max_steps, nproc, sets):
    """Re-run the reference trainer from RUN_DIR's config and seed, and check the metrics match (or a fix works)."""
    if not run_dir.exists():
        raise InputError("no such file or directory", path=run_dir)
    overrides = {}
    for value in sets:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {value}: expected KEY=VALUE")
        overrides[key.strip()] = raw.strip()
    from analyzer.trainer.reproduce import reproduce_run

    sys.exit(reproduce_run(run_dir, out, max_steps, nproc, overrides, apply_fixes, echo=click.echo))


# --- postmortem group ----------------------------------------------------------------------------------------------

@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="postmortem")
def postmortem():
    """Postmortem: incident reports for deep-learning training runs."""


postmortem.add_command(diagnose_command)
postmortem.add_command(reproduce_command)


@postmortem.command()
@click.argument("key", metavar="NAME|CODE")
@reports_errors
def explain(key):
    """Print a detector's documentation."""
    from analyzer.detectors import lookup

    det = lookup(key)
    if det is None:
        raise InputError(f"unknown detector {key!r} (see `postmortem detectors`)")
    click.echo(f"{det.code} {det.name} ({det.severity.value})\n")
    click.echo(_dedent(det.doc))
    if det.params:
        click.echo("Defaults: " + ", ".join(f"{k}={v}" for k, v in det.params.items()))


@postmortem.command()
@reports_errors
def detectors():
    """List the detectors: code, name, severity, what they need."""
    import shutil
    import textwrap

    from analyzer.detectors import DETECTORS

    width = shutil.get_terminal_size((100, 24)).columns
    for det in DETECTORS.values():
        needs = ", ".join(det.requires) or "-"
        head = f"{det.code}  {det.name:<28} {det.severity.value:<8}  needs: {needs:<28}"
        if len(head) + 1 + len(det.summary) <= width:
            click.echo(f"{head} {det.summary}")
        else:  # a narrow terminal: the summary goes under the name, wrapped to the width
            width = max(width, 40)
            if len(head.rstrip()) > width:  # a split pane: what it needs goes under the name too
                head = f"{det.code}  {det.name}  {det.severity.value}  needs: {needs}"
            click.echo(textwrap.fill(head, width=width, subsequent_indent=" " * 6, break_on_hyphens=False))
            click.echo(textwrap.fill(det.summary, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6))


@postmortem.command()
def formats():
    """List the log and checkpoint formats diagnose reads."""
    from analyzer.ingest import READERS, checkpoints

    for reader in (*READERS, checkpoints):
        doc = (reader.__doc__ or "").strip().splitlines()
        click.echo(f"{reader.FORMAT:<16} {doc[0] if doc else ''}")


def _dedent(text: str) -> str:
    import textwrap

    first, _, rest = text.strip().partition("\n")
    return first + "\n" + textwrap.dedent(rest)


def main() -> None:  # pragma: no cover - entry for `python -m analyzer.cli`
    postmortem(prog_name="postmortem")


if __name__ == "__main__":  # pragma: no cover
    main()
