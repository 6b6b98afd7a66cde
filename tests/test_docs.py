"""The documentation a user reads: README.md stays short, every relative link in README.md,
CONTRIBUTING.md, docs/ and the config and project READMEs reaches an existing file (and heading),
and nothing in them describes how the project was developed instead of how it is used."""

import re
from pathlib import Path
from typing import List

import pytest

from tests.helpers.tools import REPO_ROOT

README_MAX_LINES = 200
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
# phrases about the development machine and process, which a user cannot act on
DEVELOPMENT_PHRASES = [
    'this machine',
    'earlier session',
    'working copy',
    'load average',
    'in an earlier',
    'previous default',
    'of earlier sessions',
]


def user_docs() -> List[Path]:
    files = [REPO_ROOT / 'README.md', REPO_ROOT / 'CONTRIBUTING.md']
    files += sorted((REPO_ROOT / 'docs').glob('*.md'))
    files += sorted((REPO_ROOT / 'configs').rglob('README.md'))
    files += sorted((REPO_ROOT / 'projects').rglob('README.md'))
    return [f for f in files if f.is_file()]


def anchors(markdown: str) -> set:
    """GitHub's heading anchors: lower case, punctuation removed, spaces to hyphens."""
    result = set()
    for line in markdown.splitlines():
        if line.startswith('#'):
            title = line.lstrip('#').strip().lower()
            title = re.sub(r'[^\w\- ]', '', title)
            result.add(title.replace(' ', '-'))
    return result


def test_readme_is_short():
    lines = (REPO_ROOT / 'README.md').read_text().count('\n')
    assert lines <= README_MAX_LINES, f'README.md has {lines} lines; depth belongs in docs/'


@pytest.mark.parametrize('doc', user_docs(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r'[a-z]+://', target) or target.startswith('mailto:'):
            continue
        path, _, anchor = target.partition('#')
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == '.md' and anchor not in anchors(resolved.read_text()):
            broken.append(target)
    assert not broken, f'{doc.name}: links to nothing: {broken}'


@pytest.mark.parametrize('doc', user_docs(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_development_history(doc: Path):
    text = doc.read_text().lower()
    found = [phrase for phrase in DEVELOPMENT_PHRASES if phrase in text]
    assert not found, f'{doc.name} describes the development, not the use: {found}'
