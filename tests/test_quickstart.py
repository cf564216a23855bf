"""The embedded default end to end, shrunk: teacher pretraining -> shard -> embed -> pseudolabel -> students."""

import json

from test_stages import zmdist_cli


def test_quickstart_runs_the_whole_pipeline_and_prints_the_table(tmp_path):
    out = tmp_path / "qs"
    r = zmdist_cli("quickstart", "--out", str(out), "teacher_steps=15", "train_steps=4", "stage0_steps=2",
                   "seeds=[0]", "methods=[supervised, zeromatch]", "part=students", "progress=false", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "teacher zero-shot accuracy" in r.stdout and "zeromatch" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["teacher_zero_shot_accuracy"] <= 1.0 and summary["samples"] == 1797
    assert set(summary["students"]) == {"supervised", "zeromatch"}
    assert len(summary["students"]["zeromatch"]["accuracy_per_seed"]) == 1
    assert list((out / "cache").glob("zmdist-tiny-vit-synthdigits-*.safetensors"))  # loaded via pretrained=path
    assert (out / "pseudolabels" / "reliability.png").is_file()
    again = zmdist_cli("quickstart", "--out", str(out), "teacher_steps=15", "train_steps=4", "stage0_steps=2",
                       "seeds=[0]", "methods=[supervised]", "part=students", "progress=false", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((out / "summary.json").read_text())
    assert rerun["teacher_zero_shot_accuracy"] == summary["teacher_zero_shot_accuracy"]  # cached teacher reused


def test_a_quickstart_part_runs_alone_and_adds_its_rows(tmp_path):
    """Catches `--part NAME` running the students anyway, a part's results missing from summary.json, its
    rows missing from the printed table, or an unknown part in `parts=` accepted silently."""
    out = tmp_path / "qs"
    common = ["--out", str(out), "teacher_steps=15", "seeds=[0]", "progress=false"]
    r = zmdist_cli("quickstart", *common, "part=transfer", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["students"] == {} and set(summary["parts"]) == {"transfer"}
    assert 0.0 < summary["parts"]["transfer"]["scores"]["intra"] < 1.0
    assert "IIMM" in r.stdout and not (out / "students").exists()
    bad = zmdist_cli("quickstart", *common, "parts=[transfr]", "methods=[]", timeout=600)
    assert bad.returncode != 0 and "transfr" in bad.stderr and "known parts" in bad.stderr
