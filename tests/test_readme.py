"""The README quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert re.search(r"loss \d+\.\d{3}", printed)
    assert (tmp_path / "flare-adapter" / "flare_config.json").is_file()


def test_readme_workflow_commands_run_on_tiny_models(workspace, tmp_path, monkeypatch):
    """bash expands the README's workflow (variables, the loop, line continuations) with `flare-xlt` defined as a
    function that records each command line; the commands then run in this process through the console script's
    own entry point, in order: one torch import instead of one per command."""
    import os
    import subprocess
    from importlib.metadata import entry_points

    from conftest import NUSAX_DATA

    script = re.search(r"## Workflow.*?```bash\n(.*?)```", README.read_text(), flags=re.DOTALL).group(1)
    recorder = 'flare-xlt() { printf "%s\\0" "$@" >> "$COMMANDS"; printf "\\n\\0" >> "$COMMANDS"; }\n'
    environment = {
        **os.environ,
        "MODEL": str(workspace / "encoder"),
        "MT_MODEL": str(workspace / "nllb"),
        "DATA": NUSAX_DATA,
        "COMMANDS": str(tmp_path / "commands"),
    }
    subprocess.run(["bash", "-euo", "pipefail", "-c", recorder + script], cwd=tmp_path, env=environment, check=True)
    commands = [command.strip("\0").split("\0") for command in (tmp_path / "commands").read_text().split("\n\0")]
    commands = [command for command in commands if command != [""]]
    assert [command[0] for command in commands] == ["finetune", "translate", "translate"] + ["transfer"] * 3 + [
        "report",
        "evaluate",
    ]
    (script_entry,) = [entry for entry in entry_points(group="console_scripts") if entry.name == "flare-xlt"]
    main = script_entry.load()
    monkeypatch.chdir(tmp_path)
    for command in commands:
        main(command)
    runs = sorted(path.parent.name.rsplit("-", 1)[0] for path in (tmp_path / "runs").rglob("metrics.json"))
    assert runs == [
        "nusax-en-finetune-seed42",
        "nusax-id-flare-seed42",
        "nusax-id-lora-seed42",
        "nusax-id-zero-shot-seed42",
    ]
    assert "| flare |" in (tmp_path / "runs" / "report_nusax.md").read_text()
    assert (tmp_path / "evaluations" / "flare-id-test" / "evaluation.json").is_file()
