"""The man page lbctl(8) and the bash completion, generated from the CLI's own parser.

Why this exists: the Debian package ships both, and a hand-written copy would fall
behind the first time a command or an option changes.  Both are rendered from
``cli.build_parser()`` at package build time (``python3 -m reconciler.clidoc man``,
``... bash-completion``), so the help text users see with ``--help`` is the one
source of truth.  Output is deterministic: the page's date is
``$SOURCE_DATE_EPOCH`` when set (reproducible builds), else today.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence

from reconciler import __version__
from reconciler.cli import build_parser
from reconciler.constants import (
    DATAPATH_DIR_ENV,
    DATAPATH_SYSTEM_DIR,
    DEFAULT_CONFIG_DIR,
    DEFAULT_PIN_ROOT,
    DEFAULT_STATE_DIR,
)

# The environment variables the CLI reads (cli.py, commands/watch.py, the datapath lookup).
ENVIRONMENT = (
    ("LBCTL_CONFIG_DIR", f"the configuration directory of validate, plan, apply and watch "
                         f"(default {DEFAULT_CONFIG_DIR})"),
    ("LBCTL_STATE_DIR", f"the state directory (default {DEFAULT_STATE_DIR})"),
    ("LBCTL_PIN_ROOT", f"the bpffs directory of the pinned datapath (default {DEFAULT_PIN_ROOT})"),
    ("LBCTL_NETNS", "the network namespace of the box, as --netns"),
    (DATAPATH_DIR_ENV, f"a directory holding the datapath object and header "
                       f"instead of {DATAPATH_SYSTEM_DIR}"),
    ("NOTIFY_SOCKET", "set by systemd for Type=notify services: lbctl watch reports READY=1 after its "
                      "first verified reconcile and STATUS= lines naming the applied revision"),
)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """name -> parser of every subcommand, in ``lbctl --help`` order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _visible(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction):
            yield action


def _takes_value(action: argparse.Action) -> bool:
    return bool(action.option_strings) and action.nargs != 0


# --- man page -------------------------------------------------------------------------------------

def _roff(text: str) -> str:
    """Plain text as roff: backslashes and minus signs escaped, no line starting with a control char."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in out.split("\n"))


def _expand(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An action's help with ``%(default)s`` and friends filled in, as argparse does."""
    help_text = action.help or ""
    if "%" not in help_text:
        return help_text
    formatter = parser._get_formatter()
    return formatter._expand_help(action)


def _option_heading(action: argparse.Action) -> str:
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if not action.option_strings:
        return f"\\fI{_roff(metavar or action.dest.upper())}\\fR"
    value = ""
    if _takes_value(action):
        if action.choices is not None and metavar is None:
            value = " {" + ",".join(str(c) for c in action.choices) + "}"
        else:
            value = " " + (metavar or action.dest.upper())
    names = ", ".join(f"\\fB{_roff(o)}\\fR" for o in action.option_strings)
    return names + (f" \\fI{_roff(value.strip())}\\fR" if value else "")


def _options(parser: argparse.ArgumentParser, skip: set[str]) -> list[str]:
    lines: list[str] = []
    for action in _visible(parser):
        if action.option_strings and set(action.option_strings) <= skip:  # all common (import redefines -o)
            continue
        lines += [".TP", _option_heading(action), _roff(_expand(parser, action))]
    return lines


def _date() -> str:
    import os

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch) if epoch else None))


def manpage(parser: argparse.ArgumentParser | None = None) -> str:
    """lbctl(8) in roff (man(7) macros)."""
    parser = parser or build_parser()
    subs = subcommands(parser)
    common = {"-o", "--output", "--netns", "--state-dir", "--pin-root", "-v", "--verbose", "-h", "--help"}
    lines = [
        f'.TH LBCTL 8 "{_date()}" "lbctl {__version__}" "System Administration"',
        ".SH NAME",
        "lbctl \\- declarative control plane for an eBPF L4 load balancer",
        ".SH SYNOPSIS",
        ".B lbctl",
        "\\fICOMMAND\\fR [\\fIARGUMENTS\\fR] [\\fIOPTIONS\\fR]",
        ".br",
        ".B lbctl \\-\\-version",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        ".PP",
        _roff(f"The YAML files of the configuration directory ({DEFAULT_CONFIG_DIR} unless told) are "
              "validated, compared with what is live in the kernel, and the difference is applied and "
              "verified. The datapath stays pinned in bpffs: stopping lbctl never stops forwarding; "
              "lbctl down removes it."),
        ".SH COMMANDS",
    ]
    for name, sub in subs.items():
        usage = " ".join(sub.format_usage().split()[1:])  # without "usage:", on one line
        lines += [".SS " + _roff(f"lbctl {name}"), _roff(sub.description or ""), ".PP",
                  _roff(usage)]
        own = _options(sub, common)
        if own:
            lines += [".RS", *own, ".RE"]
    first = next(iter(subs.values()), None)
    lines.append(".SH COMMON OPTIONS")
    lines.append(_roff("Accepted by every command, after the command and its arguments."))
    if first is not None:
        lines += _options(first, set(first._option_string_actions) - common)
    lines += [
        ".SH ENVIRONMENT",
        *[x for var, text in ENVIRONMENT for x in (".TP", f"\\fB{_roff(var)}\\fR", _roff(text))],
        ".SH FILES",
        *[x for path, text in (
            (DEFAULT_CONFIG_DIR, "the configuration: any number of *.yaml files, any depth"),
            (DEFAULT_STATE_DIR, "state: IP allocations, the last applied configuration, the kernel "
                                "settings to give back, the writer lock (mode 0700)"),
            (DEFAULT_PIN_ROOT, "the pinned maps and programs of the datapath"),
            (DATAPATH_SYSTEM_DIR, "the compiled datapath object and the header of its map layouts"),
        ) for x in (".TP", f"\\fI{_roff(path)}\\fR", _roff(text))],
        ".SH EXIT STATUS",
        _roff("0 on success, 1 on an error or an invalid configuration; lbctl plan "
              "--detailed-exitcode exits 2 when there are changes."),
        ".SH SYSTEMD",
        _roff("The Debian package runs lbctl watch as lbctl.service (Type=notify). Stopping the "
              "service leaves the datapath forwarding; to remove it run: "
              "systemctl stop lbctl && lbctl down"),
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBbpftool\\fR(8), \\fBip\\fR(8)",
    ]
    return "\n".join(lines) + "\n"


# --- bash completion -------------------------------------------------------------------------------

def _words(items: Sequence[object]) -> str:
    return " ".join(str(i) for i in items)


def bash_completion(parser: argparse.ArgumentParser | None = None) -> str:
    """A bash completion script for ``lbctl``: commands, their options, and option values."""
    parser = parser or build_parser()
    subs = subcommands(parser)
    cases: list[str] = []
    for name, sub in subs.items():
        opts = sorted({o for a in _visible(sub) for o in a.option_strings})
        values: list[str] = []
        for action in _visible(sub):
            if not _takes_value(action):
                continue
            pattern = "|".join(action.option_strings)
            metavar = action.metavar if isinstance(action.metavar, str) else ""
            if action.choices is not None:
                reply = f'COMPREPLY=($(compgen -W "{_words(list(action.choices))}" -- "$cur"))'
            elif metavar in ("DIR", "D"):
                reply = 'COMPREPLY=($(compgen -d -- "$cur"))'
            elif metavar in ("FILE", "F"):
                reply = 'COMPREPLY=($(compgen -f -- "$cur"))'
            else:
                reply = "COMPREPLY=()"
            values.append(f"            {pattern}) {reply}; return ;;")
        positional = [a for a in _visible(sub) if not a.option_strings]
        choices = [c for a in positional if a.choices is not None for c in a.choices]
        fallback = (f'COMPREPLY=($(compgen -W "{_words(choices)}" -- "$cur"))' if choices
                    else 'COMPREPLY=($(compgen -d -- "$cur"))' if positional else "COMPREPLY=()")
        cases += [
            f"        {name})",
            '            case "$prev" in',
            *values,
            "            esac",
            '            if [[ "$cur" == -* ]]; then',
            f'                COMPREPLY=($(compgen -W "{_words(opts)}" -- "$cur"))',
            "            else",
            f"                {fallback}",
            "            fi",
            "            ;;",
        ]
    return "\n".join([
        "# bash completion for lbctl; generated from its argument parser (reconciler/clidoc.py)",
        "_lbctl() {",
        "    local cur prev cmd i",
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    cmd=",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        if [[ "${COMP_WORDS[i]}" != -* ]]; then cmd="${COMP_WORDS[i]}"; break; fi',
        "    done",
        '    case "$cmd" in',
        "        '')",
        f'            COMPREPLY=($(compgen -W "{_words(list(subs))} --version --help" -- "$cur"))',
        "            ;;",
        *cases,
        "    esac",
        "}",
        "complete -o filenames -F _lbctl lbctl",
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    what = list(sys.argv[1:] if argv is None else argv)
    renderers = {"man": manpage, "bash-completion": bash_completion}
    if len(what) != 1 or what[0] not in renderers:
        print(f"usage: python3 -m reconciler.clidoc {{{','.join(renderers)}}}", file=sys.stderr)
        return 2
    sys.stdout.write(renderers[what[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
