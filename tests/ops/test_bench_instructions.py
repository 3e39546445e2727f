"""The callgrind mode's own logic (ops/bench/instructions.py): the command it wraps a target in and how it
reads the counts valgrind writes. Valgrind itself never runs here."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.support import REPO

sys.path.insert(0, str(REPO / "ops" / "bench"))  # the bench's modules import one another as scripts do

import instructions  # noqa: E402


def test_a_target_starts_under_callgrind_with_counting_off(tmp_path: Path) -> None:
    out = tmp_path / "g.callgrind"
    command = instructions.under_callgrind(out, ["python", "-m", "gateway", "gateway"])
    assert command == [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        "python", "-m", "gateway", "gateway",
    ]


def test_the_total_of_a_dump_is_read_from_its_totals_or_summary_line(tmp_path: Path) -> None:
    dump = tmp_path / "a.callgrind.1"
    dump.write_text("# callgrind format\nversion: 1\nevents: Ir\nfn=(1) main\n16 200\ntotals: 123456\n")
    assert instructions._total(dump) == 123456
    dump.write_text("events: Ir\nsummary: 987\nfn=(1) x\n1 987\n")
    assert instructions._total(dump) == 987
    dump.write_text("events: Ir\nsummary: 0\nfn=(1) x\n1 555\ntotals: 555\n")  # as a dump on request reads
    assert instructions._total(dump) == 555
    dump.write_text("events: Ir\nfn=(1) x\n")  # cut short: nothing counted rather than a guess
    assert instructions._total(dump) == 0
