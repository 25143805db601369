"""Where benchmark results go: one JSON per script, with the machine, the command and the tables that made it.

A results file is {"meta": {...}, "tables": [table, ...], **raw payload}. `benchmarks.report`
renders BENCHMARKS.md from the "meta" and "tables" entries; the raw payload keeps every number
the script measured, for anyone who wants more than the tables show.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time


def table(title: str, columns: list[str], rows: list[list]) -> dict:
    """One table for the report: cells already rounded / formatted as the script wants (numbers or strings)."""
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"table {title!r}: every row needs {len(columns)} cells")
    return {"title": title, "columns": list(columns), "rows": [list(row) for row in rows]}


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Virtual machines often name only "AMD EPYC": the family and model numbers say which generation,
# and a ratio between libraries can flip between generations (README, Performance).
_CPU_GENERATIONS = {("AuthenticAMD", 26): "Zen 5",
                    ("GenuineIntel", 6, 143): "Sapphire Rapids", ("GenuineIntel", 6, 207): "Emerald Rapids"}
_ISA_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16")


def cpu_detail(cpuinfo: str = "/proc/cpuinfo") -> str:
    """Vendor family and model numbers, the generation when known, and the vector ISA that decides
    float32 and bfloat16 speed, from /proc/cpuinfo: e.g. "family 26 model 2 (Zen 5); avx512f avx512_bf16"."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return ""
    if "cpu family" not in fields:
        return ""
    vendor, family, model = fields.get("vendor_id", ""), int(fields["cpu family"]), int(fields.get("model", "-1"))
    generation = _CPU_GENERATIONS.get((vendor, family, model)) or _CPU_GENERATIONS.get((vendor, family))
    if (vendor, family) == ("AuthenticAMD", 25):  # family 19h: Zen 4 at models 10h-1Fh and 60h-AFh, else Zen 3
        generation = "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0xAF else "Zen 3"
    flags = set(fields.get("flags", "").split())
    isa = " ".join(f for f in _ISA_FLAGS if f in flags) or "no avx512"
    return f"family {family} model {model}" + (f" ({generation})" if generation else "") + f"; {isa}"


def command_line(shown=str) -> str:
    """How this process was started, as typed from the repository root: `python -m benchmarks.NAME ARGS`.

    `shown` rewrites each argument for the record (e.g. a machine-specific folder)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    return " ".join(["python", *program, *(shown(a) for a in sys.argv[1:])])


def machine_meta() -> dict:
    import jax

    return {"cpu": cpu_model(), "cpu_detail": cpu_detail(), "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "date": time.strftime("%Y-%m-%d"),
            "command": command_line()}


def write_results(path: str, *, tables: list[dict] | None = None, **payload) -> None:
    """Atomically write {"meta": machine_meta(), "tables": tables, **payload} to `path`."""
    result = {"meta": machine_meta(), "tables": list(tables or []), **payload}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)  # a reader never sees half a file


def _cell(value) -> str:
    if value is None:
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


_NUMBER_LIKE = re.compile(r"^\**-?[\d.,]+ ?(x|%)?\**$")  # 12.0x, 27 %, **12.0x**: ratios read as numbers


def _numeric(value) -> bool:
    if isinstance(value, str):
        return bool(_NUMBER_LIKE.match(value))
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def render_table(t: dict) -> str:
    columns, rows = t["columns"], t["rows"]
    # Right-align columns whose every filled cell is a number, as numbers read in markdown tables.
    right = [all(_numeric(r[i]) or r[i] in ("", None) for r in rows) and any(_numeric(r[i]) for r in rows)
             for i in range(len(columns))]
    lines = [f"**{t['title']}**", "", "| " + " | ".join(_cell(c) for c in columns) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_tables(tables: list[dict]) -> None:
    """The tables as BENCHMARKS.md shows them, on stdout: what a benchmark run prints last."""
    for t in tables:
        print("\n" + render_table(t))
