import csv
import json

import pytest

from laser.evaluation.tables import markdown_table, pivot, seed_summary, write_tables

ROWS = [
    {"run": "a", "scene": "bed", "step": 100, "miou": 0.5, "accuracy_pct": 80.0},
    {"run": "b", "scene": "sofa", "step": 300, "miou": 0.25, "accuracy_pct": 90.5},
]


def test_round_trip_of_markdown_csv_and_json(tmp_path):
    markdown = write_tables(ROWS, tmp_path, name="scores")
    assert (tmp_path / "scores.md").read_text() == markdown
    lines = markdown.splitlines()
    assert lines[0] == "| run | scene | step | miou | accuracy_pct |"
    assert lines[1] == "|---|---|---:|---:|---:|"
    assert lines[2] == "| a | bed | 100 | 0.5000 | 80.0 |"
    assert lines[3] == "| b | sofa | 300 | 0.2500 | 90.5 |"
    assert lines[4] == "| mean |  |  | 0.3750 | 85.2 |"

    table = json.loads((tmp_path / "scores.json").read_text())
    assert table[:2] == ROWS
    assert table[2] == {"run": "mean", "scene": None, "step": None, "miou": 0.375, "accuracy_pct": 85.25}

    with open(tmp_path / "scores.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [r["run"] for r in read] == ["a", "b", "mean"]
    assert [float(r["miou"]) for r in read] == [0.5, 0.25, 0.375]  # full precision, not the Markdown rounding
    assert read[2]["step"] == "" and read[0]["step"] == "100"


def test_mean_row_arithmetic_skips_missing_values(tmp_path):
    rows = [{"run": "a", "miou": 0.1}, {"run": "b", "miou": 0.2, "psnr": 20.0},
            {"run": "c", "miou": 0.6, "psnr": 30.0}]
    markdown = write_tables(rows, tmp_path)
    mean = json.loads((tmp_path / "results.json").read_text())[-1]
    assert mean["run"] == "mean"
    assert mean["miou"] == pytest.approx(0.3)
    assert mean["psnr"] == pytest.approx(25.0)  # over the two runs that have it
    assert markdown.splitlines()[2] == "| a | 0.1000 |  |"


def test_single_row_has_no_mean_row_and_mean_can_be_turned_off(tmp_path):
    write_tables(ROWS[:1], tmp_path, name="one")
    assert len(json.loads((tmp_path / "one.json").read_text())) == 1
    write_tables(ROWS, tmp_path, name="two", with_mean=False)
    assert len(json.loads((tmp_path / "two.json").read_text())) == 2


def test_non_numeric_columns_are_not_averaged(tmp_path):
    rows = [{"run": "a", "scene": "bed", "seed": 0, "note": "1.5", "miou": 0.5},
            {"run": "b", "scene": "bed", "seed": 1, "note": "2.5", "miou": 0.7}]
    write_tables(rows, tmp_path)
    mean = json.loads((tmp_path / "results.json").read_text())[-1]
    # Strings (even numeric-looking ones) and integers (seeds, steps, counts) are left empty.
    assert mean == {"run": "mean", "scene": None, "seed": None, "note": None, "miou": pytest.approx(0.6)}


def test_pipes_in_labels_are_escaped():
    assert "| a\\|b | 1.0000 |" in markdown_table([{"run": "a|b", "x": 1.0}])


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_tables(ROWS, tmp_path)
    write_tables(ROWS[::-1], tmp_path)  # overwriting goes through the same rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json", "results.md"]
    assert json.loads((tmp_path / "results.json").read_text())[0]["run"] == "b"


def test_empty_rows_are_refused(tmp_path):
    with pytest.raises(ValueError):
        write_tables([], tmp_path)


def test_pivot_with_a_missing_cell():
    runs = [
        {"configuration": "full", "scene": "bed", "miou": 0.8},
        {"configuration": "full", "scene": "sofa", "miou": 0.6},
        {"configuration": "no_ltqa", "scene": "bed", "miou": 0.5},
    ]
    table = pivot(runs, "configuration", "scene", "miou")
    assert table == [
        {"configuration": "full", "bed": 0.8, "sofa": 0.6, "mean": pytest.approx(0.7), "n_scenes": 2},
        {"configuration": "no_ltqa", "bed": 0.5, "sofa": None, "mean": 0.5, "n_scenes": 1},
    ]
    lines = markdown_table(table).splitlines()
    assert lines[0] == "| configuration | bed | sofa | mean | n_scenes |"
    assert lines[3] == "| no_ltqa | 0.5000 |  | 0.5000 | 1 |"


def test_pivot_refuses_duplicate_cells_and_clashing_names():
    with pytest.raises(ValueError, match="two rows"):
        pivot([{"c": "x", "scene": "bed", "v": 1.0}, {"c": "x", "scene": "bed", "v": 2.0}], "c", "scene", "v")
    with pytest.raises(ValueError, match="clash"):
        pivot([{"c": "x", "scene": "mean", "v": 1.0}], "c", "scene", "v")


def test_seed_summary_averages_the_seeds_of_each_cell():
    runs = [{"configuration": "full", "scene": "bed", "miou": v} for v in (0.2, 0.4, 0.3)]
    runs.append({"configuration": "plain", "scene": "bed", "miou": 0.5})
    table = seed_summary(runs, ("configuration", "scene"), "miou")
    assert table[0] == {"configuration": "full", "scene": "bed", "miou": pytest.approx(0.3), "min": 0.2, "max": 0.4,
                        "std": pytest.approx(0.1), "n_seeds": 3}
    assert table[1] == {"configuration": "plain", "scene": "bed", "miou": 0.5, "min": 0.5, "max": 0.5, "std": 0.0,
                        "n_seeds": 1}
    assert pivot(table, "configuration", "scene", "miou")[0]["bed"] == pytest.approx(0.3)
