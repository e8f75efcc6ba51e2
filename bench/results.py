"""bench/RESULTS.md holds one section per benchmark script; each run replaces only its own."""

from __future__ import annotations

import os
import re

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
ORDER = ["compare", "checkpoint"]


def replace_section(name: str, text: str, path: str = PATH) -> None:
    """Put `text` between this section's markers, keeping the other sections as they are."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    sections = dict(re.findall(r"<!-- section: (\w+) -->\n(.*?)<!-- end: \1 -->\n", old, re.S))
    if old and not sections:
        sections["compare"] = old  # a file from before the sections: it is the compare run
    sections[name] = text.rstrip("\n") + "\n"
    names = [n for n in ORDER if n in sections] + sorted(n for n in sections if n not in ORDER)
    body = "# Benchmark results\n\n" + "\n".join(
        f"<!-- section: {n} -->\n{sections[n]}<!-- end: {n} -->\n" for n in names)
    with open(path, "w") as f:
        f.write(body)
