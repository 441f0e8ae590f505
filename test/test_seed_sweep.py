"""scripts/seed_sweep.py: seed ranges, and one tiny end-to-end run that prints a table row."""
import pytest

from script_loader import load_script


def _load():
    return load_script("seed_sweep")


def test_seed_list_parses_ranges_and_lists():
    assert _load().seed_list("0-3,7") == [0, 1, 2, 3, 7]
    assert _load().seed_list("5") == [5]


def test_sweep_prints_one_row_per_preset(tmp_path, capsys):
    sweep = _load()
    assert sweep.main(["--presets", "easy", "--seeds", "0-1", "--frames", "12", "--size", "160x120",
                       "--cache-dir", str(tmp_path), "--set", "window_init_min_parallax_deg:=0.5"]) == 0
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| easy |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == 1 + 2 + 5 and cells[1].endswith("%") and cells[2].endswith("%")
    with pytest.raises(ValueError):
        sweep.main(["--presets", "easy", "--seeds", "0", "--set", "no_such_parameter:=1"])
