"""The `enclave` parser's conventions, help, shell completion and man page.

`build_parser` (cli.py) makes the commands; `finish` then applies the conventions to the
whole tree, so a command added later gets them too:

- `--json` and `--debug` work before or after the command (`global_options`);
- every flag that may be given more than once says "(repeatable)" in its help;
- a command group alone (`enclave bundle`) lists its subcommands (exit 0), not a usage error;
- the top-level help ends with the exit codes (EXIT_CODES);
- `enclave completion bash` prints a bash completion script and `enclave man` a roff man
  page, both generated from the parser (docs/CLI.md).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from enclave import __version__
from enclave.cliout import CommandLineError

EXIT_CODES = (
    (0, "success"),
    (1, "internal error (a bug: run with --debug for the traceback)"),
    (2, "bad input or usage: a file, flag, path or permission"),
    (3, "integrity: a digest, size or volume does not match, or stored data cannot be read"),
    (4, "trust: a signature, threshold, hybrid rule, key or trust root is not valid"),
    (5, "rollback: not newer than the version already accepted"),
    (6, "unsafe archive: traversal, link, device, duplicate or oversize member"),
    (7, "provisioning: a host, task or post-check failed"),
    (8, "policy: refused by the usage policy, or an approval is missing"),
    (130, "interrupted (SIGINT)"),
    (141, "stdout closed early by its reader (SIGPIPE, as `cat` in the same place)"),
)
REPEATABLE = "(repeatable)"
_MULTI = (argparse._AppendAction, argparse._AppendConstAction, argparse._ExtendAction)


class Parser(argparse.ArgumentParser):
    """Raises CommandLineError instead of exiting, so that cliout reports a command line error
    as every other error (one line, exit 2, the JSON error document with --json)."""

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        command = self.prog.removeprefix("enclave").strip()
        raise CommandLineError(f"{command}: {message}" if command else message, self.format_usage())


def global_options(top: bool) -> argparse.ArgumentParser:
    """`--json` and `--debug`: on the top parser with their defaults, on every command
    without one (argparse.SUPPRESS), so the command's copy does not reset a value given
    before the command (`enclave --json trust show`)."""
    options = argparse.ArgumentParser(add_help=False)
    default: Any = False if top else argparse.SUPPRESS
    options.add_argument(
        "--json", action="store_true", default=default, help="machine-readable output on stdout (docs/CLI.md)"
    )
    options.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks of internal errors"
    )
    return options


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """name -> (parser, one-line help) of `parser`'s subcommands ({} for a leaf command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with its command path, parents first."""
    yield path, parser
    for name, (sub, _help) in subcommands(parser).items():
        yield from walk(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings]


def _listing(parser: argparse.ArgumentParser) -> Any:
    def handler(_args: argparse.Namespace) -> tuple[str, Any]:
        subs = subcommands(parser)
        doc = {"command": parser.prog, "subcommands": [{"name": n, "help": h} for n, (_p, h) in subs.items()]}
        return parser.format_help().rstrip(), doc

    return handler


def finish(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Apply the module's conventions to every parser of the tree."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)
    for path, node in walk(parser):
        for action in options(node):
            if isinstance(action, _MULTI) and action.help and REPEATABLE not in action.help:
                action.help = f"{action.help} {REPEATABLE}"
        if path and subcommands(node):  # a group: alone, it lists its subcommands
            for action in node._actions:
                if isinstance(action, argparse._SubParsersAction):
                    action.required = False
            node.set_defaults(handler=_listing(node))
            if "--json" not in node._option_string_actions:  # `enclave bundle --json` too
                for option in global_options(top=False)._actions:
                    node._add_action(option)
    return parser


def add_commands(top: Any, sub: Any, parser: argparse.ArgumentParser) -> None:
    """`enclave completion bash` and `enclave man`, generated from `parser` when they run."""
    p = sub(
        top,
        "completion",
        lambda a: (bash_completion(parser), {"shell": a.shell}),
        "print a shell completion script",
    )
    p.add_argument("shell", choices=["bash"], help="the shell (bash: `source <(enclave completion bash)`)")
    sub(top, "man", lambda _a: (man_page(parser), {"format": "roff"}), "print the man page (roff)")


# -- completion -------------------------------------------------------------------------------
def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script: subcommands, then the options of the command typed so far;
    file names elsewhere."""
    subs_cases, opts_cases = [], []
    for path, node in walk(parser):
        key = shlex.quote(" ".join(path))
        names = " ".join(subcommands(node))
        flags = " ".join(s for a in options(node) for s in a.option_strings)
        if names:
            subs_cases.append(f"    {key}) echo {shlex.quote(names)} ;;")
        opts_cases.append(f"    {key}) echo {shlex.quote(flags)} ;;")
    return "\n".join(
        [
            f"# bash completion for enclave {__version__}; generated by `enclave completion bash`",
            "_enclave_subs() {",
            '  case "$1" in',
            *subs_cases,
            "  esac",
            "}",
            "_enclave_opts() {",
            '  case "$1" in',
            *opts_cases,
            "  esac",
            "}",
            "_enclave() {",
            '  local cur="${COMP_WORDS[COMP_CWORD]}" path="" word i',
            "  for ((i = 1; i < COMP_CWORD; i++)); do",
            '    word="${COMP_WORDS[i]}"',
            '    [[ "$word" == -* ]] && continue',
            '    if [[ " $(_enclave_subs "$path") " == *" $word "* ]]; then path="${path:+$path }$word"; fi',
            "  done",
            '  if [[ "$cur" == -* ]]; then',
            '    mapfile -t COMPREPLY < <(compgen -W "$(_enclave_opts "$path")" -- "$cur")',
            '  elif [[ -n "$(_enclave_subs "$path")" ]]; then',
            '    mapfile -t COMPREPLY < <(compgen -W "$(_enclave_subs "$path")" -- "$cur")',
            "  else",
            '    mapfile -t COMPREPLY < <(compgen -f -- "$cur")',
            "  fi",
            "}",
            "complete -o default -F _enclave enclave",
        ]
    )


# -- man page ---------------------------------------------------------------------------------
def _roff(text: str) -> str:
    """Text safe in roff: backslashes and hyphens escaped, no line starting with . or '."""
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in escaped.splitlines())


def _synopsis(path: tuple[str, ...], node: argparse.ArgumentParser) -> str:
    usage = node.format_usage().removeprefix("usage: ").strip()
    return " ".join(usage.split())


def man_page(parser: argparse.ArgumentParser, date: str | None = None) -> str:
    """The enclave(1) man page in roff, from the parser: every command, its options and help."""
    day = date or datetime.now(UTC).strftime("%Y-%m-%d")
    lines = [
        f'.TH ENCLAVE 1 "{day}" "enclave {__version__}" "User Commands"',
        ".SH NAME",
        "enclave \\- signed offline bundles for AI models crossing an air gap",
        ".SH SYNOPSIS",
        ".B enclave",
        "[\\-\\-json] [\\-\\-debug] COMMAND [ARGS]",
        ".SH DESCRIPTION",
        _roff((parser.description or "").strip()),
        ".SH COMMANDS",
    ]
    for path, node in walk(parser):
        if not path or subcommands(node):
            continue
        lines += [".SS " + _roff(" ".join(path)), ".nf", _roff(_synopsis(path, node)), ".fi"]
        if node.description:
            lines.append(_roff(node.description))
        for action in node._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            metavar = action.metavar if isinstance(action.metavar, str) else action.dest
            name = ", ".join(action.option_strings) or metavar
            if action.option_strings and action.nargs != 0:
                name += f" {metavar if action.metavar else action.dest.upper()}"
            lines += [".TP", "\\fB" + _roff(str(name)) + "\\fR", _roff(action.help or "")]
    lines.append(".SH EXIT STATUS")
    for code, text in EXIT_CODES:
        lines += [".TP", str(code), _roff(text)]
    lines += [".SH SEE ALSO", "docs/CLI.md, docs/FORMAT.md, docs/OPERATIONS.md, docs/GATEWAY.md"]
    return "\n".join(lines)
