"""[[conditions]] in the dataset TOML: the official modes load, every mistake is one line, roles are checked."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from ltx2_tuner.conditioning.spec import CONDITION_TYPES, Condition, check_conditions, load_conditions
from ltx2_tuner.data.config import load_dataset_config
from ltx2_tuner.errors import DatasetError
from ltx2_tuner.roles import roles_for

DATASET = '[[datasets]]\nvideo_directory = "clips"\n'


def _write(tmp_path, conditions: str):
    (tmp_path / "clips").mkdir(exist_ok=True)
    path = tmp_path / "dataset.toml"
    path.write_text(DATASET + textwrap.dedent(conditions), encoding="utf-8")
    return path


def _problems(tmp_path, conditions: str) -> list[str]:
    with pytest.raises(DatasetError) as caught:
        load_conditions(_write(tmp_path, conditions))
    return str(caught.value).splitlines()


# One TOML per official mode (ltx-trainer configs/*.yaml) and the conditions it must give.
OFFICIAL_MODES = {
    "video extension forward": (
        'type = "prefix"\ntemporal_boundary = 8',
        [Condition("prefix", temporal_boundary=8)],
    ),
    "audio extension backward": (
        'type = "suffix"\nmodality = "audio"\ntemporal_boundary = 8',
        [Condition("suffix", "audio", temporal_boundary=8)],
    ),
    "outpainting": (
        'type = "spatial_crop"\nregion = [0, 0, 288, 576]',
        [Condition("spatial_crop", region=(0, 0, 288, 576))],
    ),
    "audio inpainting": ('type = "mask"\nmodality = "audio"', [Condition("mask", "audio")]),
    "A2A IC-LoRA": ('type = "reference"\nmodality = "audio"', [Condition("reference", "audio")]),
}


@pytest.mark.parametrize("mode", OFFICIAL_MODES)
def test_official_modes_load(tmp_path, mode):
    body, expected = OFFICIAL_MODES[mode]
    assert list(load_conditions(_write(tmp_path, f"[[conditions]]\n{body}\n"))) == expected


def test_v2v_ic_lora_composes_reference_and_first_frame(tmp_path):
    path = _write(
        tmp_path, '[[conditions]]\ntype = "reference"\n[[conditions]]\ntype = "first_frame"\nprobability = 0.2\n'
    )
    assert load_conditions(path) == (Condition("reference"), Condition("first_frame", probability=0.2))
    assert [c.label for c in load_conditions(path)] == ["video:reference", "video:first_frame"]


def test_no_conditions_is_empty_and_the_dataset_loader_accepts_conditions(tmp_path):
    assert load_conditions(_write(tmp_path, "")) == ()
    path = _write(tmp_path, '[[conditions]]\ntype = "first_frame"\n')
    assert [d.kind for d in load_dataset_config(path)] == ["video"]


def test_dataset_loader_still_rejects_unknown_top_level_tables(tmp_path):
    with pytest.raises(DatasetError, match='unknown table "condition" \\(did you mean "conditions"\\?\\)'):
        load_dataset_config(_write(tmp_path, '[[condition]]\ntype = "first_frame"\n'))


MISTAKES = [
    (
        'type = "prefix"\ntemporal_boundary = 8\nprobabilty = 0.5',
        'unknown key "probabilty" (did you mean "probability"?)',
    ),
    ('type = "spatial_crop"\nspatial_region = [0, 0, 32, 32]', 'unknown key "spatial_region" (did you mean "region"?)'),
    ('type = "prefx"\ntemporal_boundary = 8', 'type "prefx" is unknown (did you mean "prefix"?)'),
    ('type = "first_frame"\nprobability = "high"', "probability must be a number from 0 to 1, not str 'high'"),
    ('type = "first_frame"\nprobability = 1.5', "probability 1.5 is out of range; give a number from 0 to 1"),
    ('type = "first_frame"\nmodality = "image"', 'modality \'image\' must be "video" or "audio"'),
    ('type = "prefix"', "prefix needs temporal_boundary"),
    ('type = "suffix"\ntemporal_boundary = 0', "temporal_boundary must be a whole number >= 1, not 0"),
    ('type = "suffix"\ntemporal_boundary = 2.5', "temporal_boundary must be a whole number >= 1, not 2.5"),
    ('type = "mask"\ntemporal_boundary = 2', "temporal_boundary applies to prefix and suffix only"),
    ('type = "spatial_crop"', "spatial_crop needs region = [y1, x1, y2, x2]"),
    ('type = "spatial_crop"\nregion = [0, 0, 32]', "region must be 4 integers [y1, x1, y2, x2] in pixels"),
    ('type = "spatial_crop"\nregion = [64, 0, 32, 32]', "must have 0 <= y1 < y2 and 0 <= x1 < x2"),
    ('type = "spatial_crop"\nregion = [0, 32, 32, 32]', "must have 0 <= y1 < y2 and 0 <= x1 < x2"),
    ('type = "prefix"\ntemporal_boundary = 1\nregion = [0, 0, 32, 32]', "region applies to spatial_crop only"),
    ('type = "first_frame"\nmodality = "audio"', "first_frame is video only; audio takes prefix, suffix, mask"),
    ('type = "spatial_crop"\nmodality = "audio"\nregion = [0, 0, 32, 32]', "spatial_crop is video only"),
    ("probability = 0.5", 'key "type" is missing'),
]


@pytest.mark.parametrize(("body", "message"), MISTAKES, ids=[m[1][:40] for m in MISTAKES])
def test_each_mistake_is_one_line_naming_file_table_and_key(tmp_path, body, message):
    lines = _problems(tmp_path, f'[[conditions]]\ntype = "first_frame"\n[[conditions]]\n{body}\n')
    assert all(line.startswith(f"{tmp_path / 'dataset.toml'} [[conditions]] #2: ") for line in lines)
    assert message in lines[0]
    # A second line only where the mistake also leaves a needed key unset (spatial_region for region).
    assert len(lines) == 1 or lines[1].endswith(
        "spatial_crop needs region = [y1, x1, y2, x2] (the clean box, in pixels)"
    )


def test_every_mistake_of_the_file_is_reported_at_once(tmp_path):
    lines = _problems(tmp_path, '[[conditions]]\ntype = "prefix"\nprobabilty = 1\n[[conditions]]\ntype = "suffix"\n')
    assert [line.split(": ", 1)[0].rsplit(" ", 2)[-2:] for line in lines] == [["[[conditions]]", "#1"]] * 2 + [
        ["[[conditions]]", "#2"]
    ]


def test_conditions_must_be_an_array_of_tables(tmp_path):
    with pytest.raises(DatasetError, match="must be \\[\\[conditions\\]\\] tables"):
        load_conditions(_write(tmp_path, '[conditions]\ntype = "prefix"\n'))


def test_conditions_on_a_generated_modality_pass():
    conditions = (Condition("reference"), Condition("first_frame", probability=0.2), Condition("prefix", "audio", 1, 8))
    assert check_conditions(conditions, roles_for("av")) == []


def test_conditions_on_a_frozen_or_absent_modality_are_refused():
    a2v = check_conditions((Condition("mask", "audio"), Condition("first_frame")), roles_for("av", "audio"))
    assert len(a2v) == 1 and "#1 (audio:mask): audio is frozen in A2V" in a2v[0]
    t2v = check_conditions((Condition("prefix", "audio", temporal_boundary=2),), roles_for("video"))
    assert len(t2v) == 1 and "audio is absent in T2V" in t2v[0]


def test_one_reference_per_modality_and_video_only_types():
    problems = check_conditions(
        (
            Condition("reference"),
            Condition("reference"),
            Condition("reference", "audio"),
            Condition("first_frame", "audio"),
        ),
        roles_for("av"),
    )
    assert len(problems) == 2
    assert "#2 (video:reference): a second video reference" in problems[0]
    assert "#4 (audio:first_frame): first_frame is video only" in problems[1]


def test_a_condition_of_unknown_type_is_a_bug():
    with pytest.raises(ValueError, match="no condition type"):
        Condition("inpaint")


def test_every_toml_example_of_the_guide_loads(tmp_path):
    guide = Path(__file__).parents[2] / "docs" / "conditions.md"
    blocks = re.findall(r"```toml\n(.*?)```", guide.read_text(encoding="utf-8"), flags=re.DOTALL)
    types = set()
    for number, block in enumerate(blocks):
        path = tmp_path / f"example{number}.toml"
        path.write_text(block, encoding="utf-8")
        types |= {condition.type for condition in load_conditions(path)}
    assert types == set(CONDITION_TYPES)
