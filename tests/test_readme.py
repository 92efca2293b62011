"""Every command of the README runs as written (issue 21).

The ```bash blocks of README.md are split into commands (lines ending in a backslash joined,
comments and blank lines dropped) and each is checked the cheapest way that still runs it:

- a grid, ``python -m sweeper ... -m ...`` or ``sr-sweep ... -m ...``: run with
  ``hydra.sweeper.dry_run=true`` (pre-flight on every job, nothing launched): exit 0, "dry run:";
- a single job, ``python -m sweeper ...`` without -m: ``--cfg job`` (composes its config): exit 0;
- ``python -m analysis.* | sweeper.status | sweeper.baseline | sweeper.preview ...``:
  ``--help`` (their arguments hold placeholders such as ``<sweep>``): exit 0;
- ``make <target>``: ``make -n`` (the recipe exists and expands): exit 0;
- a short allow-list that is not run (activating the venv, completion, wandb sync, pip, ...).

Any other command fails the test, naming it. The README's first screen and the links of the
README and docs/ are checked too (no file outside the repository, every linked file present).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
# the documents rewritten for issue 21: nothing in them may point outside the repository
OWN_DOCS = [README] + [ROOT / "docs" / f"{name}.md" for name in
                       ("studies", "cluster", "optuna", "interpretation", "configuration", "degradations", "results")]

# first words of commands the test does not run (environment, network, other tools)
NOT_CHECKED = {".", "source", "eval", "wandb", "optuna-dashboard", "pip", "export", "cd"}
HELP_MODULES = re.compile(r"^(analysis\.[a-z_]+|sweeper\.(status|baseline|preview))$")
DATA_KEYS = re.compile(r"^(data=(benchmarks|div2k)|eval=(seal|paper_seal))$")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def commands(text: str) -> list[str]:
    """The commands of every ```bash block: continuation lines joined, comments and blanks dropped."""
    out = []
    for block in bash_blocks(text):
        joined = re.sub(r"\\\n", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(shlex.join(words))
    return out


def sr_sweep() -> str:
    for candidate in (Path(sys.executable).parent / "sr-sweep", ROOT / ".venv" / "bin" / "sr-sweep"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("sr-sweep")
    if found is None:
        pytest.fail("the console script sr-sweep is not installed (pip install -e .)")
    return found


def plan(command: str) -> tuple[str, list[str] | None]:
    """(kind, argv to run) of a README command; argv None for the allow-list; kind "unknown" for a
    command this test does not know how to check."""
    w = shlex.split(command)
    if w[0] in NOT_CHECKED:
        return "not checked", None
    if w[0] == "make":
        return "make -n", ["make", "-n", *w[1:]]
    if w[0] in ("python", "python3") and len(w) >= 3 and w[1] == "-m":
        module, rest = w[2], w[3:]
        if module == "sweeper":
            return sweeper_plan([sys.executable, "-m", "sweeper"], rest)
        if HELP_MODULES.match(module):
            return "--help", [sys.executable, "-m", module, "--help"]
        return "unknown", None
    if w[0] == "sr-sweep":
        return sweeper_plan(["sr-sweep"], w[1:])
    return "unknown", None


def sweeper_plan(head: list[str], rest: list[str]) -> tuple[str, list[str]]:
    if "--help" in rest or "-h" in rest:
        return "--help", head + rest
    if "-m" in rest or "--multirun" in rest:
        extra = [] if any(a.startswith("hydra.sweeper.dry_run=") for a in rest) else ["hydra.sweeper.dry_run=true"]
        return "dry run", head + rest + extra
    return "--cfg job", head + ["--cfg", "job"] + rest


def readme_commands() -> list[str]:
    return commands(README.read_text())


def run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    if argv[0] == "sr-sweep":
        argv = [sr_sweep(), *argv[1:]]
    env = {**os.environ, "SR_OUTPUT_ROOT": str(tmp_path / "outputs"), "HYDRA_FULL_ERROR": "0",
           "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def data_root() -> Path:
    root = Path(os.environ.get("SR_DATA_ROOT", "../shared/data"))
    return root if root.is_absolute() else ROOT / root


# ---------------------------------------------------------------- fast: parsing and the text


def test_parser_joins_continuations_and_drops_comments():
    text = "x\n```bash\n# a comment\n\npython -m sweeper -m a=1,2 \\\n    'b=[1]'   # note\nmake tables\n```\n"
    assert commands(text) == ["python -m sweeper -m a=1,2 'b=[1]'", "make tables"]


def test_every_readme_command_is_known():
    cmds = readme_commands()
    assert len(cmds) >= 10, cmds
    unknown = [c for c in cmds if plan(c)[0] == "unknown"]
    assert not unknown, f"README commands this test cannot check (add a rule or change them): {unknown}"
    grids = [c for c in cmds if plan(c)[0] == "dry run"]
    assert grids, "the README shows no grid"
    with_placeholders = [c for c in grids + [c for c in cmds if plan(c)[0] == "--cfg job"] if "<" in c]
    assert not with_placeholders, f"sweeper commands must run as written: {with_placeholders}"


def test_first_screen_gets_a_newcomer_to_a_table():
    first = "\n".join(README.read_text().splitlines()[:60])
    for needed in ("make demo", "make test", "make tables", "python -m sweeper -m", "sr-sweep",
                   "python -m sweeper.status", "results.json", "model.pt", "status.json", "wandb/",
                   "tables/", "wandb sync", "| trained on |", "docs/"):
        assert needed in first, f"the README's first 60 lines lack {needed!r}"
    wandb_panel = "<!-- wandb-panel -->" in first or "docs/images/wandb_panel.png" in first
    assert wandb_panel, "the README's first screen has no wandb panel (or its placeholder)"


def test_no_reference_outside_the_repository():
    for doc in OWN_DOCS:
        text = doc.read_text()
        for word in ("PAPER.md", "ECOSYSTEM.md"):
            assert word not in text, f"{doc.name} mentions {word}, a file outside the repository"
        outside = [m for m in re.findall(r"\.\./shared[^\s`)'\"]*", text) if m.rstrip("/.,;") != "../shared/data"]
        assert not outside, f"{doc.name} points outside the repository: {outside}"


def test_links_and_images_point_at_files_of_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
            assert ROOT in path.parents or path == ROOT, f"{doc.relative_to(ROOT)} links outside: {target}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_anchors_of_links_exist():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, anchor = target.split("#", 1)
            linked = (doc.parent / file).resolve() if file else doc
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{doc.name} links to {target}: no such heading"


def test_images_stand_on_their_own_line():
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            if "![" in line:
                assert re.fullmatch(r"\s*!\[[^\]]*\]\([^)]+\)\s*", line), \
                    f"{doc.name}: an image in mid-sentence: {line.strip()[:80]}"


# ---------------------------------------------------------------- running the commands


def checked(kinds: set[str]) -> list[str]:
    return [c for c in readme_commands() if plan(c)[0] in kinds]


@pytest.mark.parametrize("command", checked({"--help", "make -n", "--cfg job"}))
def test_cheap_readme_command_runs(command, tmp_path):
    kind, argv = plan(command)
    proc = run(argv, tmp_path)
    assert proc.returncode == 0, f"{command!r} ({kind}) exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("command", checked({"dry run"}))
def test_readme_grid_dry_runs(command, tmp_path):
    kind, argv = plan(command)
    if any(DATA_KEYS.match(a) for a in argv) and not data_root().is_dir():
        pytest.skip(f"needs the benchmark data ({data_root()}; set SR_DATA_ROOT)")
    proc = run(argv, tmp_path)
    assert proc.returncode == 0, f"{command!r} (dry run) exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "dry run:" in proc.stdout, f"{command!r}: no 'dry run:' line:\n{proc.stdout[-2000:]}"
    assert not (tmp_path / "outputs" / "sweeps").exists() or not any((tmp_path / "outputs" / "sweeps").rglob("results.json"))


def docs_grids() -> list[str]:
    """The grid commands of the docs rewritten for issue 21 that run as written (no placeholder, no
    shell variable; Optuna studies have no dry run)."""
    out = []
    for doc in OWN_DOCS[1:]:
        for c in commands(doc.read_text()):
            if plan(c)[0] == "dry run" and not re.search(r"[<$]|hydra/sweeper=optuna", c) and c not in out:
                out.append(c)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("command", docs_grids())
def test_docs_grid_dry_runs(command, tmp_path):
    test_readme_grid_dry_runs(command, tmp_path)
