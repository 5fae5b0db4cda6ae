"""The ``lbctl`` command: parse arguments, call a command module, exit.

Why this exists: one thin entry point with the CLI contract of DESIGN.md.  Each
subcommand lives in ``reconciler/commands/NAME.py`` exposing
``add_arguments(parser)`` and ``run(args, ctx) -> int``; this module only wires
them, puts the common options on every subcommand (so they are accepted after
the subcommand and its arguments, as users type them) and turns ``LbctlError``
into a message and exit code 1 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler import __version__
from reconciler.constants import DEFAULT_PIN_ROOT, DEFAULT_STATE_DIR
from reconciler.errors import LbctlError

# name -> (module, one-line help); order is the order of `lbctl --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("validate", "check the configuration directory; touch nothing live"),
    "plan": ("plan", "show what apply would change"),
    "apply": ("apply", "make the box match the configuration, then verify"),
    "watch": ("watch", "daemon: watch the directory and keep the box converged"),
    "get": ("get", "show live state as a table"),
    "top": ("top", "live per-service packet and connection rates and endpoint health"),
    "export": ("export", "print live state as YAML in the input format"),
    "import": ("import_", "turn Kubernetes objects into lbctl YAML"),
    "down": ("down", "remove everything lbctl installed"),
    "status": ("status", "show the daemon's status"),
    "schema": ("schema", "print the JSON Schema of a kind"),
}


@dataclass(frozen=True)
class Context:
    """Where this invocation's box lives: namespace, state dir, pin root, output."""

    netns: str | None
    state_dir: Path
    pin_root: Path
    output: str
    verbose: bool
    # Commands that only look (plan, get, export, down) never change the datapath's layout:
    # pins of an older layout are migrated only by apply and the daemon.
    read_only: bool = False


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("common options")
    # a command whose own -o means something else (`import k8s -o DIR`) keeps --output only
    flags = [f for f in ("-o", "--output") if f not in parser._option_string_actions]
    g.add_argument(*flags, choices=["text", "json", "yaml", "wide"], default="text",
                   help="output format (default: text)")
    g.add_argument("--netns", metavar="NAME", default=os.environ.get("LBCTL_NETNS"),
                   help="run the datapath and netlink side inside network namespace NAME; "
                        "the box gets its own pin and state subdirectories")
    g.add_argument("--state-dir", metavar="DIR", default=os.environ.get("LBCTL_STATE_DIR", DEFAULT_STATE_DIR),
                   help=f"state directory (default: {DEFAULT_STATE_DIR})")
    g.add_argument("--pin-root", metavar="DIR", default=os.environ.get("LBCTL_PIN_ROOT", DEFAULT_PIN_ROOT),
                   help=f"bpffs directory for pinned maps and programs (default: {DEFAULT_PIN_ROOT})")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="show more detail, tracebacks on internal errors")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command``, only that subcommand's module is imported.

    Every subcommand is listed either way (``lbctl -h``); importing all of them
    costs a plan or an apply ~0.2 s of start-up (each pulls in its libraries).
    """
    parser = argparse.ArgumentParser(
        prog="lbctl",
        description="Declarative control plane for an eBPF L4 load balancer: "
                    "the YAML files in a directory are the truth.",
    )
    parser.add_argument("--version", action="version", version=f"lbctl {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = subs.add_parser(name, help=help_text, description=help_text)
        if command is not None and name != command:
            p.set_defaults(_module=None)
            _common(p)
            continue
        try:
            mod = importlib.import_module(f"reconciler.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"reconciler.commands.{module}":
                raise
            p.set_defaults(_module=None)
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # `import k8s ...`
        else:
            mod.add_arguments(p)
            p.set_defaults(_module=mod)
        _common(p)
    return parser


def pin_dir_name(netns: str) -> str:
    """The box's subdirectory of the pin root: bpffs refuses names with a '.', so
    '%' and '.' are written %25 and %2E (every other name is used as it is)."""
    return netns.replace("%", "%25").replace(".", "%2E")


def context_from(args: argparse.Namespace) -> Context:
    state, pins = Path(args.state_dir), Path(args.pin_root)
    if args.netns:
        state, pins = state / args.netns, pins / pin_dir_name(args.netns)
    return Context(netns=args.netns, state_dir=state, pin_root=pins, output=args.output,
                   verbose=args.verbose)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the exit-time flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file descriptor (tests capture stdout): nothing to flush later


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word; options come after it), if it is one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_command_of(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 1
    if args._module is None:
        print(f"lbctl: '{args.command}' is not available in this build", file=sys.stderr)
        return 1
    ctx = context_from(args)
    try:
        code = int(args._module.run(args, ctx))
        sys.stdout.flush()  # a closed pipe must fail here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `lbctl ... | head`: the reader is gone, nothing left to say
        _silence_stdout()
        return 1
    except LbctlError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so plainly, traceback only on request
        if args.verbose:
            raise
        print(f"lbctl: internal error: {type(exc).__name__}: {exc} (run with -v for a traceback; "
              "please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
