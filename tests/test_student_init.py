"""Students that start from pretrained weights (``student.pretrained``), the ``student`` section's other
options, and the older ``student=``/``student_options=`` spellings.

The training runs are real one-step runs on the digit shards of tests/test_train.py; the checkpoints are
real files (safetensors, torch pickles, a huggingface_hub cache laid out on disk)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

from test_train import FAST, digits  # noqa: F401  (module fixture: the digit shards and their pseudolabels)
from zmdist.config import ConfigError, load_config
from zmdist.models.export import CONFIG_FILE
from zmdist.models.student_init import StudentConfig, build_student, prepare_student
from zmdist.stages import build_stage_parser, parse_stage_args, train

VIT = ["student.name=timm:test_vit", "student.img_size=16", "student.options={patch_size: 4}"]
ONE_STEP = ["method.name=supervised", "steps=1", "lr=1e-12", "warmup_steps=0", "eval_every=1"]
HEAD = ["head.bias", "head.weight"]


def _checkpoint(path: Path, name: str = "test_vit", **kwargs) -> dict[str, torch.Tensor]:
    """An ImageNet-style checkpoint (1,000-class head) of a tiny timm model, saved to ``path``."""
    torch.manual_seed(123)
    state = {k: v.contiguous() for k, v in timm.create_model(name, num_classes=1000, **kwargs).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


def _vit_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    return _checkpoint(path, img_size=16, patch_size=4)


def _train(digits, out: Path, *extra: str) -> dict:  # noqa: F811
    shards, pseudolabels = digits
    cfg = load_config(train.Config, None, [f"shards={shards}", f"pseudolabels={pseudolabels}", *FAST, *ONE_STEP,
                                           *extra])
    return train.run(cfg, out)


def _assert_backbone_is(trained: dict[str, torch.Tensor], checkpoint: dict[str, torch.Tensor]) -> None:
    """Every tensor but the head equals the checkpoint's; the head has the run's 10 classes."""
    assert set(trained) == set(checkpoint)
    for key, value in checkpoint.items():
        if key not in HEAD:
            assert torch.allclose(trained[key], value, atol=1e-6), key
    assert trained["head.weight"].shape == (10, checkpoint["head.weight"].shape[1])
    assert checkpoint["head.weight"].shape[0] == 1000
    assert not torch.allclose(trained["head.weight"], checkpoint["head.weight"][:10], atol=1e-3)


def test_timm_student_from_a_local_checkpoint_keeps_its_backbone_and_gets_a_new_head(digits, tmp_path):  # noqa: F811
    """Catches: pretrained weights not loaded (random backbone), the 1,000-class head refused or copied, the
    summary not saying which tensors were loaded and replaced, an export that cannot rebuild the model."""
    checkpoint = _vit_checkpoint(tmp_path / "vit.safetensors")
    out = tmp_path / "run"
    results = _train(digits, out, *VIT, f"student.pretrained={tmp_path / 'vit.safetensors'}", "student.drop_path=0.1")
    _assert_backbone_is(load_file(str(out / "final.safetensors")), checkpoint)
    init = results["student_init"]
    assert init["source"] == str(tmp_path / "vit.safetensors") and init["replaced"] == HEAD
    assert init["loaded"] == len(checkpoint) - 2 and init["missing"] == [] and init["unexpected"] == []
    assert init["mean"] == [0.5, 0.5, 0.5] and "test_vit" in init["normalisation"]
    assert json.loads((out / "summary.json").read_text())["student_init"] == init
    recorded = yaml.safe_load((out / "config.yaml").read_text())["student"]
    assert recorded["name"] == "timm:test_vit" and recorded["drop_path"] == 0.1
    exported = json.loads((out / "export" / CONFIG_FILE).read_text())
    assert exported["model_args"] == {"patch_size": 4, "img_size": 16, "drop_path_rate": 0.1}


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, huggingface_hub offline (its constants are read at import, so patched too)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _add_to_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """Lay ``repo`` out as huggingface_hub's cache does: snapshots/<commit>/FILES and refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    return snapshot


def test_hf_hub_student_loads_through_a_cache_dir_with_its_normalisation(digits, tmp_path, offline_hub,
                                                                         monkeypatch):  # noqa: F811
    """Catches: hf-hub: weights not looked up in student.cache_dir, the repo's config.json normalisation
    not reaching the views (and the export), an absent repo failing without saying how to fill the cache."""
    snapshot = _add_to_hub_cache(offline_hub, "zmdist/tiny-vit", {CONFIG_FILE: json.dumps(
        {"architecture": "test_vit", "num_classes": 1000,
         "pretrained_cfg": {"mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3]}}).encode()})
    checkpoint = _vit_checkpoint(snapshot / "model.safetensors")
    seen = []
    real_views = train.make_views
    monkeypatch.setattr(train, "make_views", lambda *a, **kw: seen.append(kw) or real_views(*a, **kw))
    out = tmp_path / "run"
    results = _train(digits, out, *VIT, "student.pretrained=hf-hub:zmdist/tiny-vit",
                     f"student.cache_dir={offline_hub}")
    _assert_backbone_is(load_file(str(out / "final.safetensors")), checkpoint)
    init = results["student_init"]
    assert init["source"] == "hf-hub:zmdist/tiny-vit" and init["file"] == str(snapshot / "model.safetensors")
    assert (init["mean"], init["std"]) == ([0.4, 0.45, 0.5], [0.2, 0.25, 0.3])
    assert init["normalisation"] == "config.json of hf-hub:zmdist/tiny-vit"
    assert seen and all((kw["mean"], kw["std"]) == ([0.4, 0.45, 0.5], [0.2, 0.25, 0.3]) for kw in seen)
    exported = json.loads((out / "export" / CONFIG_FILE).read_text())["pretrained_cfg"]
    assert (exported["mean"], exported["std"]) == ([0.4, 0.45, 0.5], [0.2, 0.25, 0.3])
    absent = StudentConfig(name="timm:test_vit", pretrained="hf-hub:zmdist/absent", cache_dir=str(offline_hub))
    with pytest.raises(FileNotFoundError, match=r"no weights in zmdist/absent .*HF_HUB_OFFLINE=1"):
        prepare_student(absent, 10, 16)


def test_pretrained_timm_reads_the_models_own_hub_weights_from_the_cache(offline_hub):
    """Catches: student.pretrained=timm not following the timm tag's hf_hub_id, or not through the cache."""
    snapshot = _add_to_hub_cache(offline_hub, "timm/test_vit.r160_in1k", {})
    checkpoint = _checkpoint(snapshot / "model.safetensors")
    init = prepare_student(StudentConfig(name="timm:test_vit", pretrained="timm", cache_dir=str(offline_hub)), 10, 160)
    assert init.file == snapshot / "model.safetensors" and init.replaced == HEAD
    assert all(torch.equal(init.weights[k], checkpoint[k]) for k in checkpoint if k not in HEAD)


def test_a_checkpoint_without_hub_config_takes_timms_normalisation_and_set_values_win(tmp_path):
    """Catches: a pretrained backbone fed 0.5/0.5 images when timm's pretrained config says otherwise, or
    student.mean/std ignored; random students keep 0.5 (earlier results unchanged)."""
    _checkpoint(tmp_path / "eff.pt", "test_efficientnet")
    pretrained = StudentConfig(name="timm:test_efficientnet", pretrained=str(tmp_path / "eff.pt"))
    init = prepare_student(pretrained, 10, 32)
    assert init.mean == pytest.approx([0.485, 0.456, 0.406]) and init.std == pytest.approx([0.229, 0.224, 0.225])
    assert init.replaced == ["classifier.bias", "classifier.weight"]
    pretrained.mean, pretrained.std = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
    assert (prepare_student(pretrained, 10, 32).mean, prepare_student(pretrained, 10, 32).std) == (
        [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    random = prepare_student(StudentConfig(name="timm:test_efficientnet"), 10, 32)
    assert (random.mean, random.std, random.source, random.weights) == ([0.5] * 3, [0.5] * 3, "random", {})
    with pytest.raises(ValueError, match=r"student.mean and student.std: set both"):
        prepare_student(StudentConfig(name="cnn-tiny", mean=[0.5, 0.5, 0.5]), 10, 32)


def test_checkpoints_with_python_objects_are_refused_and_wrapped_state_dicts_load(tmp_path):
    """Catches: torch.load without weights_only (a pickle runs code), or a training checkpoint's
    {"model": state_dict, "epoch": N} not recognised."""
    state = _vit_checkpoint(tmp_path / "plain.pt")
    torch.save({"model": state, "epoch": 3}, tmp_path / "wrapped.pt")
    torch.save({"model": state, "args": Path("not a tensor")}, tmp_path / "pickle.pt")
    cfg = StudentConfig(name="timm:test_vit", img_size=16, options={"patch_size": 4})
    for name in ("plain.pt", "wrapped.pt"):
        cfg.pretrained = str(tmp_path / name)
        assert prepare_student(cfg, 10, 16).replaced == HEAD
    cfg.pretrained = str(tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match=r"pickle.pt holds Python objects besides tensors.*save_file"):
        prepare_student(cfg, 10, 16)


def test_bad_pretrained_weights_are_refused_before_the_output_folder_exists(digits, tmp_path):  # noqa: F811
    """Catches: a missing file or another architecture's checkpoint failing only after OUT was made (a
    folder left behind that a rerun must clean up), or shape mismatches beyond the head loaded anyway."""
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=r"student.pretrained: .*absent.safetensors is not a file"):
        _train(digits, out, *VIT, f"student.pretrained={tmp_path / 'absent.safetensors'}")
    assert not out.exists()
    _checkpoint(tmp_path / "patch8.safetensors", img_size=16, patch_size=8)
    with pytest.raises(ValueError, match=r"tensors have other shapes than timm:test_vit's \(e.g. patch_embed"):
        _train(digits, out, *VIT, f"student.pretrained={tmp_path / 'patch8.safetensors'}")
    assert not out.exists()
    with pytest.raises(ValueError, match=r"student.pretrained=timm: cnn-tiny is not a timm student"):
        _train(digits, out, "student.pretrained=timm")
    assert not out.exists()


def test_drop_path_and_img_size_reach_timm_and_are_refused_where_they_cannot(tmp_path):
    """Catches: drop_path not passed as timm's drop_path_rate, silently ignored for a student without it,
    or a model built for another size than the views."""
    vit = build_student(StudentConfig(name="timm:test_vit", drop_path=0.2, img_size=16, options={"patch_size": 4}), 10)
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2) and vit.patch_embed.img_size == (16, 16)
    with pytest.raises(ValueError, match=r"student.drop_path=0.2: only timm students"):
        prepare_student(StudentConfig(name="cnn-tiny", drop_path=0.2), 10, 16)
    with pytest.raises(ValueError, match=r"student.img_size=16 but img_size=32"):
        prepare_student(StudentConfig(name="timm:test_vit", img_size=16), 10, 32)
    with pytest.raises(ValueError, match=r"student.img_size and student.options.img_size set the same"):
        prepare_student(StudentConfig(name="timm:test_vit", img_size=16, options={"img_size": 16}), 10, 16)


def test_older_student_spellings_still_configure_the_section(tmp_path):
    """Catches: configs, sweeps and scripts that write student=/student_options= (or --student) breaking, a
    file giving both spellings keeping one silently, an override of the name dropping the file's weights."""
    cfg = load_config(train.Config, None, ["shards=s", "student=timm:test_vit", "student_options={patch_size: 4}"])
    assert (cfg.student.name, cfg.student.options) == ("timm:test_vit", {"patch_size": 4})
    old = tmp_path / "old.yaml"
    old.write_text("shards: s\nstudent: cnn-tiny\nstudent_options: {width: 8}\n")
    assert (load_config(train.Config, old).student.name, load_config(train.Config, old).student.options) == (
        "cnn-tiny", {"width": 8})
    new = tmp_path / "new.yaml"
    new.write_text("shards: s\nstudent: {name: timm:test_vit, pretrained: w.safetensors}\n")
    cfg = load_config(train.Config, new, ["student=timm:test_resnet"])
    assert (cfg.student.name, cfg.student.pretrained) == ("timm:test_resnet", "w.safetensors")
    both = tmp_path / "both.yaml"
    both.write_text("shards: s\nstudent: cnn-tiny\nstudent.name: cnn-small\n")
    with pytest.raises(ConfigError, match=r"student and student.name are the same option"):
        load_config(train.Config, both)
    _, flagged, _, _ = parse_stage_args("train", ["--out", str(tmp_path / "o"), "--shards", "s", "--student",
                                                  "cnn-tiny", "--student-options", "{width: 8}"])
    assert (flagged.student.name, flagged.student.options) == ("cnn-tiny", {"width": 8})
    help_text = " ".join(build_stage_parser(None, "train").format_help().split())
    assert "--student VALUE older spelling of student.name" in help_text
    assert "--student.pretrained" in help_text
