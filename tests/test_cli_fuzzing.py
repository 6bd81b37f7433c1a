"""Fuzzing the command line (hypothesis): hostile arguments to every subcommand end in a result or
one line on stderr with exit code 2, never a traceback. Values are drawn from hostile strings,
numbers and paths (missing, a folder, a text file, a real tiny package where running it is quick)."""

from __future__ import annotations

import contextlib
import io
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeinfer.cli import build_parser, main

CLI_FUZZ = settings(max_examples=300, deadline=timedelta(seconds=30), database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
QUICK = {"run", "inspect", "audit", "cache", "conformance", "keygen", "sign", "targets", "generate", "thresholds"}
HOSTILE = ["", " ", "-1", "0", "1e400", "nan", "99999999999999999999999", "\x00", "\udcff", "../../etc/passwd",
           "a" * 5000, "0.97", "2:0.7,4:0.5", "x:y", "auto:2", "[[[[", "{}", "int8", "cpu", "litert-cpu"]


def _subcommands() -> dict[str, list]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: [a for a in p._actions if a.dest != "help"] for name, p in sub.choices.items() if name != "demo"}


@pytest.fixture(scope="module")
def places(tiny_packages, tiny_calibration, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-fuzz")
    (root / "text.txt").write_text("good movie\n")
    return {"missing": str(root / "missing"), "folder": str(root), "text": str(root / "text.txt"),
            "package": str(tiny_packages[("bert", "text-classification")]), "calib": str(tiny_calibration),
            "out": str(root / "out")}


@given(data=st.data())
@CLI_FUZZ
def test_no_argument_list_gives_a_traceback(data, places, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # relative paths the fuzzer draws (keygen --out cpu, -o nan) land here
    commands = _subcommands()
    command = data.draw(st.sampled_from(sorted(commands)))
    paths = [places["missing"], places["folder"], places["text"], places["out"]]
    if command in QUICK:
        paths += [places["package"], places["calib"]]
    value = st.one_of(st.sampled_from(HOSTILE), st.sampled_from(paths), st.text(max_size=20))
    argv = [command]
    choices = commands[command]
    for action in data.draw(st.lists(st.sampled_from(choices), max_size=4, unique_by=id)) if choices else []:
        if action.option_strings:
            argv.append(action.option_strings[-1])
            if action.nargs != 0:
                argv.append(data.draw(value))
        else:
            argv.append(data.draw(value))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: a usage line and exit code 2
            code = exit_.code
    assert code in (0, 2), (argv, code, err.getvalue()[-500:])
    if code == 2:
        assert "Traceback" not in err.getvalue() and err.getvalue().strip(), argv


def test_every_argument_of_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    silent = [f"{name} {a.option_strings[0] if a.option_strings else a.dest}"
              for name, p in sub.choices.items() for a in p._actions if a.dest != "help" and not a.help]
    assert silent == []
