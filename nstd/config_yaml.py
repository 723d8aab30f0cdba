"""The shipped `config.yaml`, written from the schema in `nstd.config`.

Each key's comment is its field's description (`_opt(default, "doc")`), so the file and the
validation cannot disagree: `nstd check-config --print-defaults > config.yaml` rewrites it,
and a test checks that the shipped file is exactly this text.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import yaml

from nstd.config import SECTIONS, Config, to_mapping

HEADER = (
    "# nstd configuration. Every key is optional; the values below are the defaults.",
    "# Relative paths are resolved against this file's folder.",
    "# Validate with: nstd check-config --config config.yaml",
)
COMMENT_COLUMN = 38  # where the `# description` of a key starts, when the key leaves room


def default_config_text() -> str:
    """Every section and key with its default value and its description, as YAML."""
    defaults = to_mapping(Config.default())
    lines = [*HEADER]
    for name, cls in SECTIONS.items():
        lines += ["", f"{name}:"]
        for key_field in dataclasses.fields(cls):
            value, doc = defaults[name][key_field.name], key_field.metadata["doc"]
            if isinstance(value, dict) and value:  # a mapping: its description goes above
                lines += [f"  # {doc}", f"  {key_field.name}:"]
                lines += [f"    {key}: {scalar(item)}" for key, item in value.items()]
                continue
            entry = f"  {key_field.name}: {scalar(value)}"
            lines.append(f"{entry.ljust(COMMENT_COLUMN - 1)} # {doc}")
    return "\n".join(lines) + "\n"


def scalar(value: Any) -> str:
    """One value in flow style, as YAML reads it back; strings with a colon are quoted (YAML
    1.1 reads an unquoted ``22:00`` as a number)."""
    if isinstance(value, str) and ":" in value:
        return json.dumps(value)
    text: str = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.removesuffix("\n...\n").strip()
