"""The docs site: the configuration reference is the one config.py's fields write, and the site builds with
mkdocs' strict checks (a broken link or a page left out of the navigation fails it)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from soar_agent.config_reference import reference_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_the_configuration_reference_is_generated_from_config_py():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == reference_markdown(), "docs/configuration.md is stale: python -m soar_agent.config_reference > docs/configuration.md"
    assert "| `reward_target` | `\"verified\"` |" in page and "## [mining]" in page


def test_the_docs_site_builds_with_strict_link_checks(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
    result = subprocess.run([*build, "-d", str(tmp_path / "site")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()
    # the check is real: a page with a link to a missing page fails the strict build
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[gone](no-such-page.md)\n")
    config = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    (tmp_path / "mkdocs.yml").write_text(config)
    broken = subprocess.run([*build[:-1], str(tmp_path / "mkdocs.yml"), "-d", str(tmp_path / "site2")],
                            capture_output=True, text=True, env=env)
    assert broken.returncode != 0 and "no-such-page.md" in broken.stdout + broken.stderr
