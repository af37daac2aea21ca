"""The configuration reference (docs/configuration.md), written from config.py's documented fields so the
docs cannot drift from the code: `python -m soar_agent.config_reference > docs/configuration.md`
(tests/test_docs.py fails when the committed page differs)."""

from __future__ import annotations

import inspect

from soar_agent.config import RunConfig, _fields, _sections, _toml_value


def reference_markdown() -> str:
    lines = ["# Configuration reference", "",
             "Every setting of a run, by TOML section. Give them in a config file (`soar run my.toml`) or on the",
             "command line (`--set section.key=value`, the value in TOML syntax: `--set teacher.split='\"random\"'`).",
             "A resumed run keeps its stored configuration. This page is generated from `soar_agent/config.py`.", ""]
    defaults = RunConfig()
    for name, section_cls in _sections().items():
        summary = inspect.getdoc(section_cls).split(": ", 1)[-1]
        lines += [f"## [{name}]", "", summary[:1].upper() + summary[1:], "",
                  "| key | default | meaning |", "|---|---|---|"]
        for key, (_type, meta) in _fields(section_cls).items():
            default = _toml_value(getattr(getattr(defaults, name), key)).replace("|", "\\|")
            text = " ".join(meta["help"].split()).replace("|", "\\|")
            if "choices" in meta:
                text = text.rstrip(".") + ". One of: " + ", ".join(f"`{choice}`" for choice in meta["choices"]) + "."
            lines.append(f"| `{key}` | `{default}` | {text} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
