"""``dclszoo`` help, usage errors and exit codes; ``dclszoo plugins``; the CLI imports nothing heavy to parse."""

from __future__ import annotations

import json

from conftest import run_cli, run_many

COMMANDS = ("plugins", "convert", "finetune", "inspect", "export")


def test_console_script_help_and_usage_error(tmp_path):
    res = run_cli("--help", cwd=tmp_path)
    assert res.rc == 0, res.text
    for command in COMMANDS:
        assert command in res.out
    res = run_cli("convert", cwd=tmp_path)  # MODEL and --out missing
    assert res.rc == 2
    assert "usage: dclszoo convert" in res.err and "required" in res.err


def test_help_everywhere_usage_errors_and_plugins(tmp_path):
    usage_errors = [
        [],                                              # no command
        ["frobnicate"],                                  # unknown command
        ["inspect"],                                     # DIR missing
        ["export", "somewhere"],                         # --to missing
        ["export", "somewhere", "--to", "onnx"],         # bad choice
        ["finetune", "--epochs", "0"],                   # not a positive int
        ["finetune", "--recipe", "delays", "--image-size", "32"],  # option of another recipe
        ["finetune", "--recipe", "nope"],
    ]
    helps = [["--help"], ["--version"]] + [[c, "--help"] for c in COMMANDS]
    results, _ = run_many(helps + usage_errors + [["plugins"], ["plugins", "--json"]], cwd=tmp_path)
    for argv, res in zip(helps, results):
        assert res.rc == 0, (argv, res.text)
        assert res.out.strip(), argv
    for command, res in zip(COMMANDS, results[2:]):
        assert f"usage: dclszoo {command}" in res.out and "examples:" in res.out or command == "plugins", res.out
    errors = results[len(helps):len(helps) + len(usage_errors)]
    for argv, res in zip(usage_errors, errors):
        assert res.rc == 2, (argv, res.text)
        assert "usage: dclszoo" in res.err, (argv, res.err)
    assert "applies to --recipe digits" in errors[6].err
    plugins, plugins_json = results[-2:]
    assert plugins.rc == 0 and plugins_json.rc == 0
    for name in ("timm", "hf_audio", "spikingjelly"):
        assert f"{name} 0" in plugins.out and "[loaded]" in plugins.out
    data = {p["name"]: p for p in json.loads(plugins_json.out)}
    assert data["timm"]["loaded"] and any("ConvNeXt" in s for s in data["timm"]["supports"])


def test_parsing_imports_no_zoo(tmp_path):
    """`import dclszoo` and building the parser stay light: zoos, matplotlib, scikit-learn load only when used."""
    results, heavy = run_many([["--help"], ["finetune", "--help"], ["inspect", "--help"], ["export", "x", "--to", "x"]],
                              cwd=tmp_path)
    assert [r.rc for r in results] == [0, 0, 0, 2]
    assert heavy == [], heavy
