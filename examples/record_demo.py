"""Regenerate src/nexus/examples/demo.json, the recorded session the demo replays.

The LLM side is scripted (no model is needed offline); the tool calls run for real
through the kernel, and the export is what `nexus export` writes.

    python examples/record_demo.py
"""

from __future__ import annotations

import asyncio
import tempfile

from nexus.config import load_settings
from nexus.examples import DEMO_GOAL as GOAL
from nexus.examples import demo_recording
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime, dump_export

NOTES = (
    "# Sprint notes\n- journal: hash-chained, verified\n- dispatch: DBOS queue\n- bench: pending\n"
)
REPORT = (
    "# Sprint report\n\nDone: the journal (hash-chained, verified) and DBOS dispatch.\n"
    "Open: benchmarks.\n"
)
SCRIPT = [
    {"tool_calls": [{"name": "write_file", "arguments": {"path": "notes.md", "content": NOTES}}]},
    {"tool_calls": [{"name": "list_files", "arguments": {}}]},
    {"tool_calls": [{"name": "read_file", "arguments": {"path": "notes.md"}}]},
    {"tool_calls": [{"name": "write_file", "arguments": {"path": "report.md", "content": REPORT}}]},
    {"content": "report.md is written: 2 items done (journal, dispatch), 1 open (benchmarks)."},
]


async def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        rt = Runtime(load_settings(home=home), provider=ScriptedProvider(SCRIPT, model="demo-1"))
        sid = rt.create_session(GOAL)
        await rt.run(sid)
        out = demo_recording()
        out.write_text(dump_export(rt.export(sid)) + "\n", encoding="utf-8")
        await rt.aclose()
        print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
