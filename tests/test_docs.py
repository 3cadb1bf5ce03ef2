"""The documentation covers what the code accepts, and what it shows works.

In the spirit of simonw/sqlite-utils' ``tests/test_docs.py``: every option of every command
appears in that command's ``--help`` and in ``README.md``; the README's configuration table
gives each option of a run the environment variable and default the configuration really
has; every environment variable the configuration reads appears in ``.env.example``; every
exit code of ``exit_codes.py`` appears, with its number, in ``--help``'s "exit codes:" epilog
and in the README's exit-code table; every ``artist-bio-gen`` command shown in README.md,
AGENTS.md, docs/*.md and the ``--help`` examples parses with the parser ``main`` gives it, and
every ``make`` target shown exists. Each check is a function returning the problems it found,
so a test beside it can show that it fails on an undocumented option, a wrong default, a
misspelt flag. These checks are pure; at the end, a representative few of the shown commands
run for real, in process, against the fake OpenAI server and PostgreSQL.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import re
import shlex
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

import artist_bio_gen.cli
from artist_bio_gen import config, exit_codes, parse_input_file
from artist_bio_gen.cli import batch as cli_batch
from artist_bio_gen.cli import status as cli_status
from artist_bio_gen.cli import verify as cli_verify
from artist_bio_gen.errors import UsageError
from artist_bio_gen.failure_codes import FAILURE_CODES
from artist_bio_gen.models import ArtistData

from .support.checks import assert_mirror
from .support.cli import CliResult, MakeJob, run_in_process
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

# The module, not the function ``artist_bio_gen.cli.main`` that the package re-exports.
cli_main = importlib.import_module("artist_bio_gen.cli.main")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "artist_bio_gen"
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV_EXAMPLE = (ROOT / ".env.example").read_text(encoding="utf-8")
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
PROGRAM = "artist-bio-gen"


# --- commands and options ------------------------------------------------------------------


def parser_factories() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    """Every command's parser factory, keyed by the command line that reaches it.

    The CLI has no command registry (``cli.main.main`` sends ``verify`` to
    ``cli.verify.run_verify`` by its first word), so the commands are taken from one place:
    the functions of the modules in ``cli/`` that build an ``ArgumentParser`` without
    arguments. A new subcommand's parser there is found here without touching this test;
    its ``prog`` ("artist-bio-gen NAME") says how it is invoked, and the help test checks
    that ``main`` really routes that command line to it.
    """
    factories: dict[str, Callable[[], argparse.ArgumentParser]] = {}
    for info in pkgutil.iter_modules(artist_bio_gen.cli.__path__):
        module = importlib.import_module(f"artist_bio_gen.cli.{info.name}")
        for _, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ != module.__name__:
                continue
            signature = inspect.signature(function)
            builds_parser = "ArgumentParser" in str(signature.return_annotation)
            needs_arguments = any(
                p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                for p in signature.parameters.values()
            )
            if builds_parser and not needs_arguments:
                factories[function().prog] = function
    return factories


FACTORIES = parser_factories()


def test_every_command_is_discovered() -> None:
    assert parser_factories() == {
        PROGRAM: cli_main.create_argument_parser,
        f"{PROGRAM} verify": cli_verify.create_verify_parser,
        f"{PROGRAM} status": cli_status.create_status_parser,
        f"{PROGRAM} batch cancel": cli_batch.create_batch_cancel_parser,
    }


def option_strings(parser: argparse.ArgumentParser) -> Iterator[str]:
    """Every option string of ``parser``, aliases included (``--input-file``, ``--version``).

    argparse exposes no public list of a parser's actions, hence ``_actions``. Its own
    ``-h/--help`` is left out: the README says once that ``--help`` lists every option.
    """
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        yield from action.option_strings


def mentions(text: str, option: str) -> bool:
    """Whether ``text`` names ``option`` as a whole word (``--output`` is not ``--output-x``)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def undocumented_options(
    command: str, parser: argparse.ArgumentParser, help_text: str, readme: str
) -> list[str]:
    """One message per option string missing from ``help_text`` or ``readme``."""
    problems = []
    for option in option_strings(parser):
        if not mentions(help_text, option):
            problems.append(f"{option} is missing from `{command} --help`")
        if not mentions(readme, option):
            problems.append(f"{option} ({command}) is missing from README.md")
    return problems


def help_output(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> str:
    """What ``main`` prints for ``<command> --help`` (in process; logging left alone)."""
    monkeypatch.setattr(cli_main, "setup_logging", lambda *args, **kwargs: None)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli_main.main([*command.split()[1:], "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(FACTORIES))
def test_every_option_is_in_help_and_readme(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = FACTORIES[command]()
    help_text = help_output(command, capsys, monkeypatch)
    # main routes the command line to this parser (a parser nobody calls is no command).
    assert help_text == parser.format_help()
    assert mentions(README, command), f"README.md never shows the command `{command}`"
    problems = undocumented_options(command, parser, help_text, README)
    assert not problems, "undocumented options:\n  " + "\n  ".join(problems)


def test_an_undocumented_option_is_caught() -> None:
    parser = cli_main.create_argument_parser()
    parser.add_argument("--frobnicate", action="store_true", help=argparse.SUPPRESS)
    problems = undocumented_options(PROGRAM, parser, parser.format_help(), README)
    assert [problem for problem in problems if "--frobnicate" in problem] == [
        "--frobnicate is missing from `artist-bio-gen --help`",
        "--frobnicate (artist-bio-gen) is missing from README.md",
    ]


# --- environment variables -----------------------------------------------------------------


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]):
        self._values = values
        self.looked_up: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.looked_up.add(key)
        return self._values[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.looked_up.add(key)
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.looked_up.add(key)
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        # Listing the whole environment would hide which names are read: not allowed.
        raise AssertionError("the configuration iterated over the environment")

    def __len__(self) -> int:
        return len(self._values)


def _recording_env() -> RecordingEnv:
    # A database URL, so that the database settings are read; a key, so resolution completes.
    return RecordingEnv(
        {"DATABASE_URL": "postgresql://u:p@localhost:5432/music", "OPENAI_API_KEY": "sk-test"}
    )


def variables_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> set[str]:
    """Every environment variable a run or ``verify`` reads, recorded as they read them."""
    env = _recording_env()
    args = cli_main.create_argument_parser().parse_args(["--input", "x.csv", "--model", "m"])
    config.resolve_config(args, env)
    # verify reads DATABASE_URL itself (cli/verify.py) before it looks for the job.
    verify_env = _recording_env()
    monkeypatch.setattr(cli_verify, "load_environment", lambda: verify_env)
    monkeypatch.setattr(cli_verify, "setup_logging", lambda *args, **kwargs: None)
    with pytest.raises(UsageError):  # no manifest in an empty directory
        cli_verify.run_verify(["--output", str(tmp_path / "out.jsonl")])
    return env.looked_up | verify_env.looked_up


def missing_from_env_example(names: set[str], env_example: str) -> list[str]:
    """One message per name without a ``NAME=`` line (commented or not)."""
    return [
        f"{name} is read by the configuration but has no `{name}=` line in .env.example"
        for name in sorted(names)
        if not re.search(rf"^#?\s*{re.escape(name)}=", env_example, re.MULTILINE)
    ]


def test_every_variable_read_is_in_env_example(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    names = variables_read(monkeypatch, tmp_path)
    assert {"DATABASE_URL", "DB_POOL_SIZE", "OPENAI_API_KEY", "QUOTA_LOG_INTERVAL"} <= names
    problems = missing_from_env_example(names, ENV_EXAMPLE)
    assert not problems, "\n".join(problems)


def test_env_example_lists_only_variables_that_are_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE, re.MULTILINE))
    stale = sorted(listed - variables_read(monkeypatch, tmp_path))
    assert not stale, f".env.example lists variables nothing reads: {stale}"


def test_an_undocumented_variable_is_caught() -> None:
    assert missing_from_env_example({"MAX_WORKERS", "NO_SUCH_SETTING"}, ENV_EXAMPLE) == [
        "NO_SUCH_SETTING is read by the configuration but has no `NO_SUCH_SETTING=` line "
        "in .env.example"
    ]


def _environment_reads(path: Path) -> Iterator[tuple[str, int]]:
    """(enclosing function, line) of every ``os.environ`` / ``os.getenv`` use in ``path``."""
    names = {"environ", "getenv"}

    def visit(node: ast.AST, function: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(child, child.name)
                continue
            if isinstance(child, ast.Attribute) and child.attr in names:
                yield function, child.lineno
            if (
                isinstance(child, ast.ImportFrom)
                and child.module == "os"
                and any(alias.name in names for alias in child.names)
            ):
                yield function, child.lineno
            yield from visit(child, function)

    yield from visit(ast.parse(path.read_text(encoding="utf-8")), "<module>")


def test_only_load_environment_reads_the_process_environment() -> None:
    """The recording above sees every variable only if nothing bypasses the mapping."""
    found = {
        f"{path.relative_to(ROOT)}:{line} ({function})"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for function, line in _environment_reads(path)
    }
    allowed = {
        f"artist_bio_gen/config.py:{line} (load_environment)"
        for function, line in _environment_reads(PACKAGE_DIR / "config.py")
        if function == "load_environment"
    }
    assert allowed, "config.load_environment no longer reads os.environ; update this test"
    # The entry point hands the whole environment on to the process it re-executes (with
    # glibc's GLIBC_TUNABLES, which glibc reads, not the tool); it reads no setting.
    allowed |= {
        f"artist_bio_gen/entry.py:{line} ({function})"
        for function, line in _environment_reads(PACKAGE_DIR / "entry.py")
        if function == "reexec_with_tuned_malloc"
    }
    assert found == allowed, (
        "the process environment is read outside config.load_environment: "
        f"{sorted(found - allowed)}; take settings from the env mapping resolve_config gets"
    )


# --- exit codes ----------------------------------------------------------------------------

_STOP_WORDS = {"with", "that", "this", "then", "from", "when", "does", "have", "some"}


def words(text: str) -> set[str]:
    """The meaningful words of a short description (lower case, four letters or more)."""
    return {w for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in _STOP_WORDS}


def exit_code_constants() -> dict[int, tuple[str, str]]:
    """number -> (constant name, its ``#:`` comment or "") from ``exit_codes.py``."""
    source = (PACKAGE_DIR / "exit_codes.py").read_text(encoding="utf-8").splitlines()
    constants: dict[int, tuple[str, str]] = {}
    for name, value in vars(exit_codes).items():
        if not name.startswith("EXIT_"):
            continue
        assert value not in constants, f"{name} and {constants[value][0]} share {value}"
        line = next(i for i, text in enumerate(source) if text.startswith(f"{name} ="))
        comment = []
        while line > 0 and source[line - 1].startswith("#:"):
            line -= 1
            comment.insert(0, source[line][2:].strip())
        constants[value] = (name, " ".join(comment))
    return constants


def help_exit_codes(help_text: str) -> dict[int, str]:
    """number -> meaning from the "exit codes:" part of ``--help`` (the epilog's end)."""
    part = help_text.split("\nexit codes:", 1)[1]
    # "0 done, 1 input file missing/unreadable, 2 bad path or options, ...": split before
    # each "<number> " that follows a comma (commas inside parentheses precede words).
    entries = re.split(r",\s*(?=\d+\s)", " ".join(part.split()).rstrip("."))
    codes = {}
    for entry in entries:
        number, meaning = entry.split(" ", 1)
        codes[int(number)] = meaning
    return codes


def readme_exit_codes(readme: str) -> dict[int, str]:
    """number -> meaning from the README's table with the header ``| code | meaning |``."""
    table = readme.split("| code | meaning |", 1)[1].split("\n\n", 1)[0]
    return {
        int(match[1]): match[2].strip()
        for match in re.finditer(r"^\|\s*(\d+)\s*\|([^|]*)\|", table, re.MULTILINE)
    }


def exit_code_problems(
    constants: dict[int, tuple[str, str]], in_help: dict[int, str], in_readme: dict[int, str]
) -> list[str]:
    """Codes missing from or unknown to either text, and meanings that do not agree."""
    problems = []
    for where, listed in (("--help's 'exit codes:'", in_help), ("the README table", in_readme)):
        for number in sorted(constants.keys() - listed.keys()):
            problems.append(f"exit code {number} ({constants[number][0]}) is missing from {where}")
        for number in sorted(listed.keys() - constants.keys()):
            problems.append(f"{where} lists exit code {number}, which exit_codes.py lacks")
    for number in sorted(constants.keys() & in_help.keys() & in_readme.keys()):
        name, comment = constants[number]
        documented = words(in_help[number]) | words(in_readme[number])
        if not words(in_help[number]) & words(in_readme[number]):
            problems.append(
                f"exit code {number}: --help says {in_help[number]!r}, "
                f"the README {in_readme[number]!r}; they share no word"
            )
        if comment and not words(comment) & documented:
            problems.append(f"exit code {number}: {name}'s comment {comment!r} matches no doc")
    return problems


def test_every_exit_code_is_in_help_and_readme(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    constants = exit_code_constants()
    in_help = help_exit_codes(help_output(PROGRAM, capsys, monkeypatch))
    in_readme = readme_exit_codes(README)
    assert {0, 2, 130} <= in_help.keys() & in_readme.keys()  # the parsers found the lists
    problems = exit_code_problems(constants, in_help, in_readme)
    assert not problems, "\n".join(problems)


def test_a_missing_or_unknown_exit_code_is_caught() -> None:
    unused = [code for code in range(8, 75) if code not in exit_code_constants()][:2]
    new, invented = unused
    constants = {**exit_code_constants(), new: ("EXIT_NEW", "Something new happened.")}
    in_help = help_exit_codes(cli_main.create_argument_parser().format_help())
    in_readme = {**readme_exit_codes(README), invented: "invented"}
    assert exit_code_problems(constants, in_help, in_readme) == [
        f"exit code {new} (EXIT_NEW) is missing from --help's 'exit codes:'",
        f"exit code {new} (EXIT_NEW) is missing from the README table",
        f"the README table lists exit code {invented}, which exit_codes.py lacks",
    ]


# --- docs/ARCHITECTURE.md ------------------------------------------------------------------


def test_every_failure_code_is_in_the_architecture_doc() -> None:
    table = ARCHITECTURE.split("| code | meaning | stops the run |", 1)[1].split("\n\n", 1)[0]
    rows = {match[1]: match[0] for match in re.finditer(r"^\| `(\w+)` \|.*$", table, re.M)}
    assert sorted(FAILURE_CODES.keys() - rows.keys()) == [], "codes missing from the table"
    assert sorted(rows.keys() - FAILURE_CODES.keys()) == [], "the table lists unknown codes"
    for code, entry in FAILURE_CODES.items():
        cells = [cell.strip() for cell in rows[code].split("|")]
        stops, counts, retried = cells[3], cells[4], cells[5]
        if entry.stops_run is None:
            assert stops == "no", f"{code}: the table says it stops the run"
        else:
            assert stops == f"yes, exit {entry.stops_run.exit_code}", f"{code}: {stops!r}"
        assert counts == ("yes" if entry.counts_towards_cap else "no"), f"{code}: {counts!r}"
        assert retried == ("yes" if entry.retried else "no"), f"{code}: {retried!r}"


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def named_tests(text: str) -> Iterator[tuple[str, str | None]]:
    """(test file, function or None) for each ``test_x.py``, ``test_x.py::f`` and ``::f``
    in backticks; ``::f`` belongs to the file named last before it."""
    current = None
    for token in re.findall(r"`([^`\s]+)`", text):
        match = re.fullmatch(r"(?:tests/)?(test_\w+\.py)(?:::(\w+))?|::(\w+)", token)
        if match is None:
            continue
        if match[1]:
            current = match[1]
            yield current, match[2]
        elif current is not None:
            yield current, match[3]


@pytest.mark.parametrize("doc", ["docs/ARCHITECTURE.md", "docs/MIGRATING.md", "README.md"])
def test_every_test_a_doc_names_exists(doc: str) -> None:
    problems = []
    for name, function in named_tests((ROOT / doc).read_text(encoding="utf-8")):
        path = ROOT / "tests" / name
        if not path.exists():
            problems.append(f"tests/{name} does not exist")
            continue
        if function and function not in _test_functions(path):
            problems.append(f"tests/{name} has no function {function}")
    assert not problems, f"{doc} is out of date:\n  " + "\n  ".join(problems)


def test_a_renamed_test_is_caught() -> None:
    names = list(named_tests("`test_output.py::test_gone`, `::test_opening_truncates_a_torn_tail`"))
    assert names == [
        ("test_output.py", "test_gone"),
        ("test_output.py", "test_opening_truncates_a_torn_tail"),
    ]
    assert "test_gone" not in _test_functions(ROOT / "tests" / "test_output.py")


# --- the repository explains itself --------------------------------------------------------

#: Pointers to documents that are not in the repository: numbered guarantees ("G1") of an
#: outside design document, the design and legacy documents themselves, a shared directory.
OUTSIDE_REFERENCE = re.compile(r"\bG[0-9]+\b|\bDESIGN\b|\bLEGACY\.md\b|\.\./shared")


def outside_references(paths: list[Path]) -> list[str]:
    """``file:line: text`` of every line that points outside the repository."""
    found = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE_REFERENCE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def _text_files(where: str) -> list[Path]:
    path = ROOT / where
    if path.is_file():
        return [path]
    files = [p for p in sorted(path.rglob("*")) if p.suffix in {".py", ".md"}]
    # This file spells the patterns out.
    return [p for p in files if p != Path(__file__).resolve()]


@pytest.mark.parametrize(
    "where",
    [
        "artist_bio_gen",
        "benchmarks",
        "docs",
        "README.md",
        "AGENTS.md",
        ".env.example",
        "tests",
    ],
)
def test_nothing_refers_to_documents_outside_the_repository(where: str) -> None:
    found = outside_references(_text_files(where))
    assert not found, (
        "say what is meant in words (e.g. 'committed only: a line only after its commit') "
        "or point at a file of the repository:\n  " + "\n  ".join(found)
    )


# --- the README's configuration table ------------------------------------------------------


class TableRow:
    """One row of the README's ``| option | env var | default | meaning |`` table."""

    def __init__(self, options: list[str], env: str | None, default: str):
        self.options = options
        self.env = env
        self.default = default

    def __repr__(self) -> str:
        return f"TableRow({self.options}, {self.env}, {self.default!r})"


def config_table(readme: str) -> list[TableRow]:
    """The rows of the table whose header is ``| option | env var | default | meaning |``."""
    table = readme.split("| option | env var | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        options = re.findall(r"`(--[\w-]+)`", cells[0])
        env = None if cells[1] == "-" else cells[1].strip("`")
        rows.append(TableRow(options, env, cells[2]))
    return rows


#: Defaults that are not one value of the option: the exact words the table uses for each,
#: and the check that shows the configuration really behaves so.
DESCRIBED_DEFAULTS = {
    "--input": "- (required; on `--resume`, the job's)",
    "--instructions-file": "the built-in instructions",
    "--db-pool-size": "min(workers, 10)",
    "--transaction-log": "`<stem>.transactions.jsonl`",
    "--service-tier": "- (the account's)",
}

#: What each option needs beside it to be valid (given on both sides of a comparison).
COMPANIONS = {
    "--price-input": ["--price-output", "1"],
    "--price-output": ["--price-input", "1"],
    "--batch-wait": ["--mode", "batch"],
}

#: Options that cannot be left out when their companion is given: the value the baseline
#: of a comparison gives them instead.
REFERENCE_VALUES = {"--price-input": "3", "--price-output": "3"}

BASE_ENV = {
    "OPENAI_API_KEY": "sk-doc-base-key",
    "DATABASE_URL": "postgresql://u:p@localhost:5432/music",
}


def _resolve(
    args: list[str], env: Mapping[str, str] | None = None, testing: str = ""
) -> config.Config:
    """The configuration of ``args`` plus an input and a model (a stored prompt when the
    option ``testing`` is ``--model``), over a key and a database URL in the environment."""
    prompt = ["--prompt-id", "pmpt_base"] if testing == "--model" else ["--model", "base-model"]
    base = ["--input", "x.csv", *prompt]
    parsed = cli_main.create_argument_parser().parse_args([*base, *args])
    return config.resolve_config(parsed, {**BASE_ENV, **(env or {})})


#: Options whose valid values no rule below finds.
SAMPLE_VALUES = {"--processes": "2"}


def _sample(action: argparse.Action, default: object) -> str:
    """A valid value of ``action`` other than its default."""
    for option in action.option_strings:
        if option in SAMPLE_VALUES:
            return SAMPLE_VALUES[option]
    if action.choices:
        return next(str(c) for c in action.choices if str(c) != str(default))
    if action.type is int:
        number = int(str(default)) if default is not None else 20
        return str(number // 2 if number >= 2 else number + 1)
    if action.type is float:
        value = float(str(default)) if default is not None else 20.0
        return str(value / 2 if value > 0 else 1.0)
    if action.type is not None:  # --quota-monitoring: true or false
        return "false" if str(default) == "true" else "true"
    if "url" in action.dest:
        return "postgresql://u:p@elsewhere:5432/other"
    return f"doc-{action.dest}"


def _literal_default(row: TableRow) -> str | None:
    match = re.fullmatch(r"`([^`]+)`", row.default)
    return match[1] if match else None


def config_table_problems(rows: list[TableRow]) -> list[str]:
    """Options missing from the table or unknown to the parser, and env vars and defaults
    the configuration does not really have."""
    parser = cli_main.create_argument_parser()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    listed = [option for row in rows for option in row.options]
    problems = [
        f"{option} is missing from the README's configuration table"
        for option in option_strings(parser)
        if option not in listed
    ]
    problems += [f"the configuration table lists {o}, which the parser lacks" for o in listed
                 if o not in actions]  # fmt: skip
    for row in rows:
        if row.options and all(o in actions for o in row.options):
            problems += _row_problems(row, actions[row.options[0]])
    return problems


def _row_problems(row: TableRow, action: argparse.Action) -> list[str]:
    option = row.options[0]
    if {s for s in action.option_strings} != set(row.options):
        return [f"{option}: the row names {row.options}, the parser {action.option_strings}"]
    if isinstance(action, argparse._StoreTrueAction):
        ok = row.default == "off" and row.env is None
        return [] if ok else [f"{option} is a switch: its row should say '-' and 'off'"]
    problems = []
    if option in DESCRIBED_DEFAULTS:
        if row.default != DESCRIBED_DEFAULTS[option]:
            problems.append(f"{option}: default {row.default!r}, expected the described one")
    elif row.default.startswith("-"):
        if row.default != "-":
            problems.append(f"{option}: default {row.default!r} is neither '-' nor a value")
    elif _literal_default(row) is None:
        problems.append(f"{option}: default {row.default!r} is not one `value`")
    return problems + _behaviour_problems(row, action)


def _behaviour_problems(row: TableRow, action: argparse.Action) -> list[str]:
    """The configuration resolved with the documented env var and default behaves so."""
    option = row.options[0]
    if option in ("--input", "--instructions-file", "--transaction-log"):
        return []  # no variable; their defaults are checked in test_described_defaults_hold
    companions = COMPANIONS.get(option, [])
    default = _literal_default(row)
    value = _sample(action, default)
    reference = [option, REFERENCE_VALUES[option]] if option in REFERENCE_VALUES else []
    baseline = _resolve([*companions, *reference], testing=option)
    given = _resolve([*companions, option, value], testing=option)
    problems = []
    if given == baseline:
        problems.append(f"{option} {value} changes nothing in the configuration")
    if default is not None and _resolve([*companions, option, default], testing=option) != baseline:
        problems.append(f"{option}: the documented default {default} is not the real one")
    if row.env is not None and _resolve(companions, {row.env: value}, option) != given:
        problems.append(f"{option}: {row.env}={value} does not act like {option} {value}")
    return problems


def test_the_configuration_table_matches_the_parser_and_the_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rows = config_table(README)
    assert len(rows) > 40, "the configuration table was not found"
    problems = config_table_problems(rows)
    # Every variable the configuration reads is some option's, and in the table.
    in_table = {row.env for row in rows if row.env}
    problems += [
        f"{name} is read by the configuration but missing from the configuration table"
        for name in sorted(variables_read(monkeypatch, tmp_path) - in_table)
    ]
    assert not problems, "README configuration table:\n  " + "\n  ".join(problems)


def test_described_defaults_hold(tmp_path: Path) -> None:
    """The defaults the table describes in words rather than as one value."""
    assert _resolve(["--max-workers", "3"]).db.pool_size == 3  # type: ignore[union-attr]
    assert _resolve(["--max-workers", "20"]).db.pool_size == 10  # type: ignore[union-attr]
    assert _resolve([]).service_tier is None  # not sent: the account's default applies
    from artist_bio_gen.api.request import DEFAULT_INSTRUCTIONS
    from artist_bio_gen.jobfiles import JobPaths

    assert _resolve([]).prompt.instructions == DEFAULT_INSTRUCTIONS
    assert JobPaths(Path("bios.jsonl")).transaction_log == Path("bios.transactions.jsonl")
    with pytest.raises(UsageError, match="No input file given"):
        config.resolve_config(
            cli_main.create_argument_parser().parse_args(["--model", "m"]), BASE_ENV
        )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("| `--max-workers` | `MAX_WORKERS` | `4` |", "| `--max-workers` | `MAX_WORKERS` | `8` |"),
         "--max-workers: the documented default 8 is not the real one"),
        (("| `--max-workers` | `MAX_WORKERS` |", "| `--max-workers` | `OPENAI_RPM` |"),
         "--max-workers: OPENAI_RPM=2 does not act like --max-workers 2"),
        (("| `--limit` | - | - |", "| `--limitt` | - | - |"),
         "--limit is missing from the README's configuration table"),
        (("| `--no-db` | - | off |", "| `--no-db` | - | on |"),
         "--no-db is a switch: its row should say '-' and 'off'"),
    ],
)  # fmt: skip
def test_a_stale_configuration_table_is_caught(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in README
    assert expected in config_table_problems(config_table(README.replace(old, new)))


# --- every command the docs show -----------------------------------------------------------

#: The documents whose commands must work, and the languages of their fenced blocks that hold
#: shell lines (a bare fence too: the README's diagrams hold no command line).
DOCS = ["README.md", "AGENTS.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/*.md"))]
SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console", "cron"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Tokens that end a command on a shell line (what follows is another command or a redirect).
SHELL_OPERATORS = {"&&", "||", "|", ";", "&", ">", ">>", "<", "2>&1", "2>", "2>>"}


class ShownCommand:
    """One ``artist-bio-gen ...`` command line as a document shows it."""

    def __init__(self, where: str, args: list[str]):
        self.where = where
        self.args = args

    @property
    def text(self) -> str:
        return " ".join([PROGRAM, *self.args])

    def __repr__(self) -> str:
        return f"{self.where}: {self.text}"


def _program_end(tokens: list[str]) -> int | None:
    """Index after the program in ``tokens`` (``artist-bio-gen`` at any path, or
    ``python -m artist_bio_gen``); None when the line runs no command of ours."""
    for index, token in enumerate(tokens):
        if token.rsplit("/", 1)[-1] == PROGRAM:
            return index + 1
        if tokens[index : index + 2] == ["-m", "artist_bio_gen"]:
            return index + 2
    return None


def _command_in(line: str, where: str) -> ShownCommand | None:
    line = line.strip().removeprefix("$ ")
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    start = _program_end(tokens)
    if start is None:
        return None
    args: list[str] = []
    for token in tokens[start:]:
        if token in SHELL_OPERATORS or token.startswith((">", "2>")):
            break
        args.append(token)
    return ShownCommand(where, args)


def shown_commands(text: str, name: str) -> list[ShownCommand]:
    """Every command line of ours in ``text``: in its shell code blocks (continuation lines
    joined) and in its inline code spans."""
    found = []
    for match in FENCE.finditer(text):
        if match[1] not in SHELL_LANGUAGES:
            continue
        first = text.count("\n", 0, match.start()) + 2
        body = match[2].replace("\\\n", " ")
        for offset, line in enumerate(body.splitlines()):
            command = _command_in(line, f"{name}:{first + offset}")
            if command is not None:
                found.append(command)
    prose = FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
    for match in re.finditer(r"`([^`\n]+)`", prose):
        span = match[1]
        if span.startswith((f"{PROGRAM} ", "python -m artist_bio_gen ")):
            where = f"{name}:{prose.count(chr(10), 0, match.start()) + 1}"
            command = _command_in(span, where)
            if command is not None:
                found.append(command)
    return found


def all_shown_commands() -> list[ShownCommand]:
    """The commands of every document, and the examples of every command's ``--help``."""
    found = []
    for name in DOCS:
        found += shown_commands((ROOT / name).read_text(encoding="utf-8"), name)
    for command, factory in sorted(FACTORIES.items()):
        epilog = factory().epilog or ""
        for shown in shown_commands(f"```sh\n{epilog}\n```\n", "help"):
            line = int(shown.where.split(":")[1]) - 1  # the fence line added above
            found.append(ShownCommand(f"`{command} --help`, epilog line {line}", shown.args))
    return found


def _parser_for(args: list[str]) -> tuple[argparse.ArgumentParser, list[str]] | str:
    """The parser ``main`` sends ``args`` to and the arguments it gets, or a problem."""
    best = PROGRAM
    for command in FACTORIES:
        words = command.split()[1:]
        if words and args[: len(words)] == words and len(command) > len(best):
            best = command
    rest = args[len(best.split()) - 1 :]
    if rest and not rest[0].startswith("-") and best == PROGRAM:
        return (
            f"unknown subcommand `{PROGRAM} {rest[0]}`: no parser in artist_bio_gen/cli has that "
            f"prog (known: {', '.join(sorted(FACTORIES))})"
        )
    return FACTORIES[best](), rest


def command_problems(command: ShownCommand) -> list[str]:
    """Why ``command`` would not parse as shown: an unknown subcommand, an option the parser
    lacks (or abbreviates: argparse would accept ``--max-work``), a bad value."""
    found = _parser_for(command.args)
    if isinstance(found, str):
        return [f"{command!r}: {found}"]
    parser, rest = found
    known = set(option_strings(parser)) | {"-h", "--help"}
    problems = [
        f"{command!r}: {token.split('=', 1)[0]} is not an option of `{parser.prog}`"
        for token in rest
        if token.startswith("--") and token.split("=", 1)[0] not in known
    ]
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        try:
            parser.parse_args(rest)
        except SystemExit as exited:
            if exited.code != 0:  # 0: --help
                last = stderr.getvalue().strip().splitlines()[-1:]
                problems.append(f"{command!r}: {' '.join(last)}")
    return problems


def test_every_command_the_docs_show_parses() -> None:
    commands = all_shown_commands()
    wheres = {c.where.split(":")[0].split(",")[0] for c in commands}
    assert {"README.md", "docs/MIGRATING.md", f"`{PROGRAM} --help`"} <= wheres
    problems = [problem for command in commands for problem in command_problems(command)]
    assert not problems, "commands in the docs that do not parse:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("artist-bio-gen --inptu artists.csv --model m",
         "--inptu is not an option of `artist-bio-gen`"),
        ("artist-bio-gen --input a.csv --max-worker 8",
         "--max-worker is not an option of `artist-bio-gen`"),
        ("artist-bio-gen --input a.csv --max-workers many",
         "argument --max-workers: invalid int value: 'many'"),
        ("artist-bio-gen verify --output o.jsonl --repiar",
         "--repiar is not an option of `artist-bio-gen verify`"),
        ("artist-bio-gen frobnicate --output o.jsonl",
         "unknown subcommand `artist-bio-gen frobnicate`"),
    ],
)  # fmt: skip
def test_a_command_that_does_not_parse_is_caught(line: str, expected: str) -> None:
    (command,) = shown_commands(f"```sh\n{line}  # a comment\n```\n", "doc")
    problems = command_problems(command)
    assert any(expected in problem for problem in problems), problems


def test_commands_are_found_in_blocks_spans_and_cron_lines() -> None:
    text = (
        "Run `artist-bio-gen --resume --retry-failed` again.\n\n"
        "```cron\n0 * * * * cd /srv && /srv/.venv/bin/artist-bio-gen --resume --output "
        "/srv/out.jsonl >> /var/log/x.log 2>&1\n```\n\n"
        "```sh\npython -m artist_bio_gen verify \\\n  --output out.jsonl\n```\n"
        '```json\n{"artist-bio-gen": 1}\n```\n'
    )
    assert [(c.where, c.args) for c in shown_commands(text, "doc")] == [
        ("doc:4", ["--resume", "--output", "/srv/out.jsonl"]),
        ("doc:8", ["verify", "--output", "out.jsonl"]),
        ("doc:1", ["--resume", "--retry-failed"]),
    ]


def make_targets(text: str) -> set[str]:
    """The targets of every ``make X`` in the code of ``text``: its shell code blocks and its
    inline code spans (prose such as "make a run safe" is not a command)."""
    code = [m[2] for m in FENCE.finditer(text) if m[1] in SHELL_LANGUAGES]
    prose = FENCE.sub("", text)
    code += re.findall(r"`([^`\n]+)`", prose)
    pattern = re.compile(r"(?:^|[\s;&|])make ([a-z][\w-]*)", re.MULTILINE)
    return {target for piece in code for target in pattern.findall(piece)}


def test_every_make_target_the_docs_show_exists() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    defined = set(re.findall(r"^([\w.-]+):", makefile, re.MULTILINE))
    shown = {
        (name, target)
        for name in DOCS
        for target in make_targets((ROOT / name).read_text(encoding="utf-8"))
    }
    assert {target for _, target in shown} >= {"install", "test", "lint", "bench"}
    missing = sorted(f"{name}: make {target}" for name, target in shown if target not in defined)
    assert not missing, f"make targets the docs show but the Makefile lacks: {missing}"
    assert make_targets("`PYTEST_ARGS='-m x' make test`; to make a run, `make demo`") == {
        "test",
        "demo",
    }


# --- and a representative few of them, run -------------------------------------------------
# In the test process, against the fake OpenAI server and a real PostgreSQL database, in the
# test's directory (the working directory, where make_job writes artists.csv).


def shown_args(text: str) -> list[str]:
    """The arguments of the command a document shows as exactly ``text``."""
    for command in all_shown_commands():
        if command.text == text:
            return command.args
    raise AssertionError(f"no document shows `{text}` any more; update this test")


def ok(result: CliResult) -> CliResult:
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    return result


def test_the_quick_start_dry_run_runs(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    args = shown_args(
        f"{PROGRAM} --input examples/artists.csv --model gpt-4.1-mini --no-db --dry-run"
    )
    result = ok(run_in_process(args))
    example_ids = {
        a.artist_id for a in parse_input_file(tmp_path / "examples" / "artists.csv").artists
    }
    shown = [json.loads(line)["artist_id"] for line in result.stdout.splitlines() if line]
    assert shown and set(shown) <= example_ids
    assert f"dry run: {len(example_ids)} artists would be processed" in result.stderr
    # The --help example of the same, on the example input under the name it uses.
    shutil.copy(tmp_path / "examples" / "artists.csv", tmp_path / "artists.csv")
    dry = shown_args(f"{PROGRAM} --input artists.csv --model gpt-4.1-mini --dry-run")
    assert ok(run_in_process(dry)).stdout == result.stdout


def test_the_readme_job_commands_run(
    make_job: MakeJob, fake_openai: FakeOpenAI, database: TestDatabase
) -> None:
    """Start a job, verify it, and the cron and retry commands that continue it."""
    job = make_job(6, seed=1101)
    ok(job.run(*shown_args(f"{PROGRAM} --input artists.csv --prompt-id pmpt_123 --max-workers 16")))
    assert len(assert_mirror(job.out, database)) == 6
    assert fake_openai.total_requests == 6
    for verify in ("verify --output out.jsonl", "verify --output out.jsonl --repair"):
        assert "out.jsonl" in ok(job.run(*shown_args(f"{PROGRAM} {verify}"))).stdout
    cron = shown_args(f"{PROGRAM} --resume --output /srv/bios/out.jsonl")
    ok(job.run(*[arg.replace("/srv/bios/", "") for arg in cron]))
    ok(job.run(*shown_args(f"{PROGRAM} --resume --retry-failed")))
    ok(job.run(*shown_args(f"{PROGRAM} --resume")))
    nightly = f"{PROGRAM} --resume --daily-limit 5000 --max-cost 20 --service-tier flex"
    ok(job.run(*shown_args(nightly), env={"OPENAI_PRICE_INPUT": "1", "OPENAI_PRICE_OUTPUT": "2"}))
    assert fake_openai.total_requests == 6, "the job was done: no command paid again"
    # The model example of --help, with its own output, and the verify example of --help.
    model_job = f"{PROGRAM} --input artists.csv --model gpt-4.1-mini --output bios.jsonl"
    ok(job.run(*shown_args(model_job)))
    ok(job.run(*shown_args(f"{PROGRAM} verify --output bios.jsonl --repair")))
    assert fake_openai.total_requests == 12


def test_the_migration_guide_takeover_commands_run(
    make_job: MakeJob, fake_openai: FakeOpenAI, database: TestDatabase
) -> None:
    """docs/MIGRATING.md's takeover of a 1.x output (a failed line, a torn tail), then its
    verify and resume commands."""
    job = make_job(5, seed=1102)
    good, failed, torn = job.artists[:2], job.artists[2], job.artists[3]

    def legacy_line(artist: ArtistData, **fields: object) -> str:
        record = {"artist_id": artist.artist_id, "artist_name": artist.name}
        record.update(response_text="Old bio.", db_status="updated", error=None)
        record.update(fields)
        return json.dumps(record, ensure_ascii=False) + "\n"

    whole = "".join([*map(legacy_line, good), legacy_line(failed, error="APIError: boom")])
    job.out.write_text(whole + legacy_line(torn)[:40], encoding="utf-8")
    env = {"OPENAI_PROMPT_ID": "pmpt_123"}

    takeover = shown_args(f"{PROGRAM} --resume --input artists.csv --output out.jsonl")
    ok(job.run(*takeover, env=env))
    assert job.out.read_text(encoding="utf-8").startswith(whole)
    assert {a.name: fake_openai.calls(a.name) for a in job.artists} == {
        a.name: 0 if a in good else 1 for a in job.artists
    }
    ok(job.run(*shown_args(f"{PROGRAM} verify --output out.jsonl")))
    ok(job.run(*shown_args(f"{PROGRAM} --resume")))
    assert fake_openai.total_requests == 3


def test_the_batch_commands_run(make_job: MakeJob, fake_openai: FakeOpenAI) -> None:
    """Submit; cancel the batch while it runs (it answered 2 of 4 first); finish online."""
    job = make_job(4, seed=1103)
    fake_openai.batches.script(polls=10, answered=2)
    submit = f"{PROGRAM} --mode batch --input artists.csv --prompt-id pmpt_123 --model gpt-4.1-mini"
    submitted = ok(job.run(*shown_args(submit)))
    # how to collect is part of the summary (stdout), not of the log
    assert f"{PROGRAM} --resume" in submitted.stdout
    assert len(fake_openai.batches.batches) == 1
    ok(job.run(*shown_args(f"{PROGRAM} batch cancel --output out.jsonl")))
    assert [b.status for b in fake_openai.batches.batches] == ["cancelling"]
    assert fake_openai.total_requests == 0, "batch mode sends no online request"
    ok(job.run(*shown_args(f"{PROGRAM} --resume --finish-online")))
    assert [b.status for b in fake_openai.batches.batches] == ["cancelled"]
    assert fake_openai.total_requests == 2, "the 2 the batch did not answer went online"
    ok(job.run(*shown_args(f"{PROGRAM} --resume")))
    assert job.database is not None
    assert len(assert_mirror(job.out, job.database)) == 4
    assert len(fake_openai.batches.batches) == 1 and fake_openai.total_requests == 2
