"""The docs match the code: every flag of every command is documented in docs/ by its whole name, every dataset
TOML key in docs/dataset_config.md with its default, every error class in docs/ltx2.md's troubleshooting table, and
every local link in docs/ and README.md resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ltx2_tuner.cli import (
    cache_latents,
    cache_text_encoder_outputs,
    convert_lora,
    demo,
    generate_video,
    inspect_cache,
    inspect_checkpoint,
    train_network,
)
from ltx2_tuner.testing import make_tiny

DOCS = "\n".join(path.read_text() for path in (Path(__file__).parents[2] / "docs").glob("*.md"))


def documented(flag: str, text: str) -> bool:
    """Whether `text` names `flag` in a code span (`--flag`, `--flag VALUE`, `--flag=VALUE`), as a whole name:
    `--vae` is not satisfied by `--vae_dtype` or `--vae-tiling`, nor by `--vae` inside another flag's name."""
    return re.search(r"`" + re.escape(flag) + r"(?![\w-])", text) is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("| `--vae` | none | ignored |", True),
        ("use `--vae DIR`", True),
        ("use `--vae=DIR`", True),
        ("`--vae`, `--dit`", True),
        ("| `--vae_dtype` | bf16 |", False),  # a longer flag with an underscore continuation
        ("`--vae-tiling`", False),  # a longer flag with a dash continuation
        ("`--vae2`", False),
        ("--vae", False),  # not in a code span
        ("`--no-vae`", False),  # another flag that ends with the name
    ],
)
def test_the_matcher_takes_whole_flag_names_only(text, expected):
    assert documented("--vae", text) is expected


def test_the_matcher_escapes_the_flag():
    assert documented("--no-independent_audio_timestep", "`--no-independent_audio_timestep`;")
    assert not documented("--a.b", "`--axb`")  # "." is literal, not a regex wildcard


@pytest.mark.parametrize(
    "command",
    [
        cache_latents,
        cache_text_encoder_outputs,
        convert_lora,
        demo,
        generate_video,
        inspect_cache,
        inspect_checkpoint,
        make_tiny,
        train_network,
    ],
)
def test_every_flag_is_documented(command):
    parser = command.build_parser()
    flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--") and s != "--help"]
    assert flags
    missing = [flag for flag in flags if not documented(flag, DOCS)]
    assert not missing, f"{command.__name__}: undocumented flags {missing}"


# --- the user guide and the dataset key reference (docs/ltx2.md, docs/dataset_config.md) ---

REPO = Path(__file__).parents[2]
SRC = REPO / "src" / "ltx2_tuner"


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """Every markdown table row whose first cell is one code span, by that span: {column header: cell}."""
    rows: dict[str, dict[str, str]] = {}
    lines = text.splitlines()
    header: list[str] = []
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        if not line.startswith("|"):
            header = []
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if re.fullmatch(r"\|[-:| ]+\|", following.strip()):
            header = cells
        elif header and (key := re.fullmatch(r"`([^`]+)`", cells[0])):
            rows[key.group(1)] = dict(zip(header, cells, strict=True))  # a row with a stray "|" fails here
    return rows


def section(text: str, title: str) -> str:
    """The text under the level-2 heading `title`, up to the next level-2 heading."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def toml_text(value) -> str:
    """How a default is written in TOML (and in the docs' default column)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    return str(value)


def test_table_rows_reads_cells_by_header():
    text = "| key | default |\n|---|---|\n| `a` | `1` |\n| not a key | x |\n\n| `b` | 2 |\n"
    assert table_rows(text) == {"a": {"key": "`a`", "default": "`1`"}}  # `b` is outside any table with a header


def test_every_dataset_key_is_in_dataset_config_md_with_its_default():
    # The schema tables themselves: key -> (types, default, validator); a None default means "unset" or "required".
    from ltx2_tuner.data.config import _DATASET_ONLY, _SHARED

    rows = table_rows((REPO / "docs" / "dataset_config.md").read_text())
    problems = []
    for key, (_, default, _) in {**_SHARED, **_DATASET_ONLY}.items():
        cell = rows.get(key, {}).get("default")
        if cell is None:
            problems.append(f"{key}: no row with a default column")
        elif default is None and not cell.startswith("none"):
            problems.append(f"{key}: has no default, the docs say {cell!r}")
        elif default is not None and f"`{toml_text(default)}`" not in cell:
            problems.append(f"{key}: default `{toml_text(default)}`, the docs say {cell!r}")
    assert not problems, problems


def test_the_media_suffixes_of_each_dataset_kind_are_listed():
    from ltx2_tuner.data.config import MEDIA_EXTENSIONS

    rows = table_rows((REPO / "docs" / "dataset_config.md").read_text())
    for kind, suffixes in MEDIA_EXTENSIONS.items():
        listed = set(re.findall(r"\w+", rows[f"{kind}_directory"]["meaning"]))
        missing = [suffix for suffix in suffixes if suffix.removeprefix(".") not in listed]
        assert not missing, f"{kind}_directory: suffixes {missing} are not in docs/dataset_config.md"


def test_every_condition_key_is_in_dataset_config_md_with_its_default(tmp_path):
    from ltx2_tuner.conditioning.spec import _KEYS, load_conditions

    # The defaults are what load_conditions fills in for keys a table leaves out.
    toml = tmp_path / "dataset.toml"
    toml.write_text('[[conditions]]\ntype = "first_frame"\n')
    (loaded,) = load_conditions(toml)
    defaults = {"modality": loaded.modality, "probability": loaded.probability}
    rows = table_rows(section((REPO / "docs" / "dataset_config.md").read_text(), "Conditions"))
    for key in _KEYS:
        cell = rows[key]["default"]
        expected = f"`{toml_text(defaults[key])}`" if key in defaults else "none"
        assert expected in cell, f"[[conditions]] {key}: expected {expected}, the docs say {cell!r}"


def error_classes() -> set[str]:
    """The exception classes defined under src/ltx2_tuner, found in the source (nothing is imported): subclasses of
    any builtin exception, warnings and module-private classes (`_Name`, caught where they are raised) left out."""
    import ast
    import builtins

    bases: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                bases[node.name] = names
    builtin = vars(builtins)
    errors = {n for n, c in builtin.items() if isinstance(c, type) and issubclass(c, Exception)}
    warnings = {n for n, c in builtin.items() if isinstance(c, type) and issubclass(c, Warning)}
    found: set[str] = set()
    while True:  # grow the set of our classes that derive from an exception, one inheritance level per pass
        new = {name for name, names in bases.items() if names & (errors | found) and name not in found}
        if not new:
            break
        found |= new
    warning_classes = {name for name in found if bases[name] & warnings}
    return {name for name in found - warning_classes if not name.startswith("_")}


def test_error_classes_finds_ours():
    assert {"Ltx2TunerError", "CacheError", "LoraFileError", "TrainingError"} <= error_classes()
    assert not {"_PastEnd", "LoraLoadWarning", "Exception"} & error_classes()


def test_every_error_class_is_in_the_troubleshooting_table():
    rows = table_rows(section((REPO / "docs" / "ltx2.md").read_text(), "Troubleshooting"))
    classes = error_classes()
    assert not classes - rows.keys(), (
        f"error classes missing from docs/ltx2.md Troubleshooting: {classes - rows.keys()}"
    )
    assert not rows.keys() - classes, f"rows for classes the code does not define: {rows.keys() - classes}"
    for name, row in rows.items():
        assert "error: " in row["example lines (as printed)"] or name == "Ltx2TunerError", name
        assert row["fix"], name


def doc_links(path: Path) -> list[tuple[str, Path, str]]:
    """(link text, target file, anchor) of every local link in a markdown file: `[text](target#anchor)` relative to
    the file, and `docs/NAME.md` named in the text, relative to the repository."""
    text = path.read_text()
    links = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or an anchor on the same page
        file, _, anchor = target.partition("#")
        links.append((target, path.parent / file, anchor))
    for target in re.findall(r"(?<![\w./-])docs/[\w./-]+\.md", text):
        links.append((target, REPO / target, ""))
    return links


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file."""
    anchors = set()
    prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)  # `# comment` lines in code
    for title in re.findall(r"^#+ (.+)$", prose, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_doc_link_resolves():
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for path in files:
        for target, file, anchor in doc_links(path):
            if not file.exists():
                broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in github_anchors(file):
                broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken
