"""The man page and the bash completion are rendered from the parser: every command and option is in them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from reconciler.cli import COMMANDS, build_parser
from reconciler.clidoc import bash_completion, main, manpage, subcommands


def test_every_command_and_option_is_in_the_man_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    page = manpage()
    assert page.startswith('.TH LBCTL 8 "2023-11-14" "lbctl ')
    for name in COMMANDS:
        assert f".SS lbctl {name}\n" in page
    for name, sub in subcommands(build_parser()).items():
        for action in sub._actions:
            for option in action.option_strings:
                assert option.replace("-", "\\-") in page, (name, option)
    assert "NOTIFY_SOCKET" in page and "systemctl stop lbctl && lbctl down" in page
    assert manpage() == page  # deterministic


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
def test_man_renders_the_page_without_warnings() -> None:
    r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", "-"], input=manpage(),
                       capture_output=True, text=True, timeout=60,
                       env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stderr == "", r.stderr


def complete(script: str, line: str) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end), with the script loaded."""
    words = line.split(" ")
    program = script + "\n" + "\n".join([
        "COMP_WORDS=(" + " ".join(f"'{w}'" for w in words) + ")",
        f"COMP_CWORD={len(words) - 1}",
        "_lbctl",
        'printf "%s\\n" "${COMPREPLY[@]}"',
    ])
    r = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


def test_bash_completes_commands_options_and_values() -> None:
    script = bash_completion()
    assert complete(script, "lbctl ap") == ["apply"]
    assert set(COMMANDS) <= set(complete(script, "lbctl "))
    assert complete(script, "lbctl watch --li") == ["--listen"]
    assert complete(script, "lbctl apply conf.d -o j") == ["json"]
    assert complete(script, "lbctl watch --log-format ") == ["kv", "json"]
    assert "--detailed-exitcode" in complete(script, "lbctl plan -")
    assert "etc" in complete(script, "lbctl apply --state-dir e")  # a directory
    assert complete(script, "lbctl watch --listen ") == []  # a free value: nothing to offer


def test_main_prints_what_is_asked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bash-completion"]) == 0
    assert "complete -o filenames -F _lbctl lbctl" in capsys.readouterr().out
    assert main(["nope"]) == 2
