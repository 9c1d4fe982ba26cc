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


def test_readme_workflow_commands_run_on_tiny_models(workspace, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import NUSAX_DATA

    script = re.search(r"## Workflow.*?```bash\n(.*?)```", README.read_text(), flags=re.DOTALL).group(1)
    environment = {
        **os.environ,
        "MODEL": str(workspace / "encoder"),
        "MT_MODEL": str(workspace / "nllb"),
        "DATA": NUSAX_DATA,
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    finished = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    runs = sorted(path.parent.name.rsplit("-", 1)[0] for path in (tmp_path / "runs").rglob("metrics.json"))
    assert runs == [
        "nusax-en-finetune-seed42",
        "nusax-id-flare-seed42",
        "nusax-id-lora-seed42",
        "nusax-id-zero-shot-seed42",
    ]
    assert "| flare |" in (tmp_path / "runs" / "report_nusax.md").read_text()
