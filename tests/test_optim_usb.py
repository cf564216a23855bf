"""USB's optimiser for ViT students: layer-wise lr decay groups, no weight decay on embeddings, USB's 7/16
cosine schedule, and USB's centre-cropped evaluation of large images. Expected values are computed by
hand here from the released code's rules (cited in zmdist/train/param_groups.py and schedule.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

from engine_fakes import FakeBackend, Items, ScriptedEvaluator
from test_stages import _env
from zmdist.config import ConfigError, load_config
from zmdist.models import DualHead, create_student
from zmdist.stages import train
from zmdist.train.augment import describe_views, make_views
from zmdist.train.contract import Batch, DataNeeds
from zmdist.train.engine import Engine, EngineConfig, EngineHooks, TrainData
from zmdist.train.param_groups import param_groups
from zmdist.train.schedule import SCHEDULES, usb_cosine

LR, WD = 0.08, 0.05
# layer_decay 0.5, L = 2 blocks: stem 0.5^3, blocks.0 0.5^2, blocks.1 and the final norm 0.5, head 1
HAND_LR = {"cls_token": 0.01, "pos_embed": 0.01, "patch_embed.": 0.01, "blocks.0.": 0.02, "blocks.1.": 0.04,
           "norm.": 0.04, "head.": 0.08}
DECAYED = {"patch_embed.proj.weight", "head.weight"} | {
    f"blocks.{i}.{w}.weight" for i in (0, 1) for w in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}


def tiny_vit(img_size: int = 8, patch_size: int = 4, in_chans: int = 3) -> torch.nn.Module:
    """timm's ViT (the names USB's ViT copies), 2 blocks, a few thousand weights."""
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size, patch_size=patch_size,
                             in_chans=in_chans, depth=2, embed_dim=8, num_heads=2, num_classes=3)


def by_name(model: torch.nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    """Parameter name -> (lr, weight decay) of its group; every parameter in exactly one group."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, tuple[float, float]] = {}
    for group in groups:
        for p in group["params"]:
            assert names[id(p)] not in out, f"{names[id(p)]} in two groups"
            out[names[id(p)]] = (group.get("lr", LR), group["weight_decay"])
    assert set(out) == set(names.values())
    return {name: (round(lr, 12), wd) for name, (lr, wd) in out.items()}


def hand(name: str) -> tuple[float, float]:
    lr = next(v for k, v in HAND_LR.items() if name.startswith(k))
    return lr, WD if name in DECAYED else 0.0


# --- parameter groups ------------------------------------------------------------------------------------
def test_layer_decay_groups_of_a_vit_match_hand_computed_lrs_and_weight_decay():
    """Catches: a wrong layer numbering (the final norm not sharing the last block's layer, the stem not at
    layer 0, the head not at the top), the scale's exponent off by one, weight decay on pos_embed /
    cls_token / norms / biases, or the first group (the one logged) not at the peak lr."""
    model = tiny_vit()
    groups = param_groups(model, LR, WD, layer_decay=0.5)
    got = by_name(model, groups)
    assert got == {name: hand(name) for name in got}
    assert len(groups) == 8  # 4 layers x (decayed, not decayed)
    assert groups[0]["lr"] == LR and groups[0]["lr_scale"] == 1.0
    assert [g["layer"] for g in groups] == [3, 3, 2, 2, 1, 1, 0, 0]


def test_dual_head_wrapped_vit_gets_the_same_groups_and_its_heads_the_top_layer():
    """Catches: the DualHead's `backbone.` prefix breaking the ViT rule or its no_weight_decay() names,
    and ZeroMatch's heads (main, aux) not at the top layer's lr as USB's p_head."""
    torch.manual_seed(0)
    model = DualHead(tiny_vit())
    got = by_name(model, param_groups(model, LR, WD, layer_decay=0.5))
    plain = [name for name, _ in tiny_vit().named_parameters() if not name.startswith("head.")]
    expected = {f"backbone.{name}": hand(name) for name in plain}
    for head in ("main", "aux"):
        expected |= {f"{head}.weight": (0.08, WD), f"{head}.bias": (0.08, 0.0)}
    assert got == expected


def test_without_layer_decay_embeddings_norms_and_biases_skip_weight_decay_for_any_student():
    """Catches: pos_embed / cls_token decayed (they are 3-D, so a rule by dimension alone decays them), or
    layer_decay=1 refusing a non-ViT student."""
    for model in (tiny_vit(), DualHead(tiny_vit())):
        got = by_name(model, param_groups(model, LR, WD, layer_decay=1.0))
        prefix = "backbone." if isinstance(model, DualHead) else ""
        assert got[f"{prefix}pos_embed"][1] == got[f"{prefix}cls_token"][1] == 0.0
        assert got[f"{prefix}blocks.0.attn.qkv.weight"][1] == WD and got[f"{prefix}norm.weight"][1] == 0.0
    declared = DualHead(tiny_vit())
    declared.backbone.no_weight_decay = lambda: {"patch_embed.proj.weight"}  # a model's own list, prefixed
    assert by_name(declared, param_groups(declared, LR, WD, layer_decay=0.5))["backbone.patch_embed.proj.weight"] == (
        0.01, 0.0)
    cnn = create_student("cnn-tiny", 3)
    decay, no_decay = param_groups(cnn, LR, WD, layer_decay=1.0)
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == WD
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(cnn.parameters()))


@pytest.mark.parametrize("student, culprit", [("cnn-tiny", "SmallCNN"), ("torchvision:resnet18", "ResNet"),
                                              ("timm:mobilenetv3_small_050", "conv_stem.weight")])
def test_layer_decay_on_a_student_without_vit_blocks_is_an_error_naming_it(student, culprit):
    """Catches: a CNN silently trained with every parameter at one lr scale, or a model that has blocks.N
    but a stem the ViT rule does not know (timm's MobileNet) getting that stem at the head's lr."""
    for model in (create_student(student, 3), DualHead(create_student(student, 3))):
        with pytest.raises(ValueError, match=rf"layer_decay < 1 needs a ViT student.*{culprit}.*layer_decay=1.0"):
            param_groups(model, LR, WD, layer_decay=0.5)


def test_train_options_range_and_defaults():
    """Catches: layer_decay 0 or above 1 accepted, or a schedule name outside cosine/usb."""
    cfg = load_config(train.Config, None, ["shards=x", "layer_decay=0.65", "schedule=usb"])
    assert (cfg.layer_decay, cfg.schedule) == (0.65, "usb")
    assert (train.Config(shards="x").layer_decay, train.Config(shards="x").schedule) == (1.0, "cosine")
    for bad in ("layer_decay=0", "layer_decay=1.5", "schedule=linear"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(train.Config, None, ["shards=x", bad])
    with pytest.raises(ValueError, match=r"layer_decay=1.5: must be in \(0, 1\]"):
        param_groups(tiny_vit(), LR, WD, layer_decay=1.5)


# --- the schedule ----------------------------------------------------------------------------------------
def test_usb_schedule_matches_the_released_formula():
    """USB's get_cosine_schedule_with_warmup: step / warmup, then cos(pi * 7/16 * (step - warmup) /
    (total - warmup)). Catches: zmdist's (step + 1) warm-up, the half-period cosine ending at 0, or 7/16
    applied to the wrong term."""
    fn = usb_cosine(warmup=4, total=20)
    assert fn(0) == 0.0 and fn(3) == 0.75 and fn(4) == 1.0
    assert fn(12) == pytest.approx(math.cos(math.pi * 7 / 16 * 8 / 16))  # 0.7730
    assert fn(19) == pytest.approx(math.cos(math.pi * 7 / 16 * 15 / 16))  # 0.2525
    assert fn(20) == pytest.approx(0.19509032)  # cos(7 pi / 16): USB's lr ends at a fifth of its peak
    assert SCHEDULES["usb"] is usb_cosine and SCHEDULES["cosine"](4, 20)(20) == pytest.approx(0.0)


# --- the engine sets them --------------------------------------------------------------------------------
class _ImageLoss:
    """CE on the fake stream's pseudolabels, its 4 features read as a 1x2x2 image for the ViT."""

    needs = DataNeeds(stream=True)

    def loss(self, model, batch: Batch, step: int, total: int, reduce_mean):
        loss = torch.nn.functional.cross_entropy(model(batch.x_ulb_w.view(-1, 1, 2, 2))[:, :2], batch.yp_ulb)
        return loss, {"loss": loss.detach()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        pass


def test_engine_trains_each_group_at_its_scale_times_the_usb_schedule(tmp_path):
    """Catches: the engine ignoring layer_decay or schedule, a scheduler that resets the groups to one lr,
    or a first step that moves the weights (USB's warm-up starts at lr 0)."""
    torch.manual_seed(0)
    model = tiny_vit(img_size=2, patch_size=1, in_chans=1)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    items = Items(batch=4)
    cfg = EngineConfig(steps=6, lr=LR, weight_decay=WD, optimizer="adamw", momentum=0.9, warmup_steps=2,
                       eval_every=100, log_every=1, checkpoint_every=0, keep_checkpoints=1, select_metric="top1",
                       layer_decay=0.5, schedule="usb", progress=False)
    data = TrainData(labelled=None, labelled_batch=0, labelled_workers=0,
                     stream=(items, DataLoader(items, batch_size=4)), evaluator=ScriptedEvaluator([0.5]))
    seen: dict[int, dict[str, float]] = {}
    moved_after_step_1: list[bool] = []

    def record(phase: str, step: int) -> None:
        names = {id(p): n for n, p in engine.backend.model.named_parameters()}
        seen[step] = {names[id(p)]: g["lr"] for g in engine.backend.optimizer.param_groups for p in g["params"]}
        if step == 1:
            now = engine.backend.model.named_parameters()
            moved_after_step_1.append(any(not torch.equal(p, start[n]) for n, p in now))

    engine = Engine(cfg, FakeBackend(), _ImageLoss(), data, tmp_path, model, EngineHooks(on_step_end=record))
    engine.fit(resume=False)
    # after k optimizer steps the scheduler is at step k: warm-up 1/2, then cos(pi * 7/16 * (k - 2) / 4)
    multiplier = {1: 0.5, 2: 1.0, 3: math.cos(math.pi * 7 / 64), 4: math.cos(math.pi * 7 / 32),
                  5: math.cos(math.pi * 21 / 64), 6: math.cos(math.pi * 7 / 16)}
    for step, lrs in seen.items():
        assert lrs == pytest.approx({n: hand(n)[0] * multiplier[step] for n in lrs}), step
    assert moved_after_step_1 == [False]
    logged = [json.loads(x)["lr"] for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"lr"' in x]
    assert logged == pytest.approx([LR * multiplier[k] for k in range(1, 7)])


def test_layer_decay_on_a_cnn_student_stops_the_engine_before_training(tmp_path):
    """Catches: the engine building its optimizer without the layer-decay check (training a CNN at one lr)."""
    items = Items(batch=4)
    cfg = EngineConfig(steps=2, lr=LR, weight_decay=WD, optimizer="adamw", momentum=0.9, warmup_steps=0,
                       eval_every=1, log_every=1, checkpoint_every=0, keep_checkpoints=1, select_metric="top1",
                       layer_decay=0.5, progress=False)
    data = TrainData(labelled=None, labelled_batch=0, labelled_workers=0,
                     stream=(items, DataLoader(items, batch_size=4)), evaluator=ScriptedEvaluator([0.5]))
    with pytest.raises(ValueError, match=r"the student \(Linear\) has parameter 'weight'"):
        Engine(cfg, FakeBackend(), _ImageLoss(), data, tmp_path, torch.nn.Linear(4, 2)).fit(resume=False)
    assert not (tmp_path / "log.jsonl").exists()


DEEPSPEED_SCRIPT = """
import json, sys, timm, torch
from zmdist.backends.deepspeed_backend import DeepSpeedBackend
from zmdist.train.engine import Engine, EngineConfig
from zmdist.train.schedule import usb_cosine
model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, depth=2, embed_dim=8,
                          num_heads=2, num_classes=3)
cfg = EngineConfig(steps=4, lr=0.08, weight_decay=0.05, optimizer="adamw", momentum=0.9, warmup_steps=1,
                   eval_every=1, log_every=1, checkpoint_every=0, keep_checkpoints=1, select_metric="top1",
                   layer_decay=0.5, schedule="usb", progress=False)
backend = DeepSpeedBackend(zero_stage=int(sys.argv[1]), micro_batch=2)
engine = Engine(cfg, backend, None, None, None, model)
backend.setup(model, engine._optimizer(model), usb_cosine(1, 4))
names = {id(p): n for n, p in model.named_parameters()}
steps = []
for _ in range(3):
    backend.step(backend.model(torch.randn(2, 3, 8, 8)).logsumexp(1).mean())
    steps.append([{"lr": g["lr"], "weight_decay": g["weight_decay"], "lr_scale": g["lr_scale"]}
                  for g in backend.optimizer.param_groups])
print("GROUPS " + json.dumps(steps))
"""


def test_deepspeed_keeps_the_engines_groups_and_scales_them_by_the_schedule(tmp_path):
    """Catches: DeepSpeed (ZeRO-1, which re-partitions the optimizer's groups) dropping a group's own lr or
    weight decay, or its scheduler wrapper resetting all groups to one lr."""
    proc = subprocess.run([sys.executable, "-c", DEEPSPEED_SCRIPT, "1"], capture_output=True, text=True,
                          env=_env(), timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(proc.stdout.split("GROUPS ", 1)[1])
    multipliers = [1.0, math.cos(math.pi * 7 / 48), math.cos(math.pi * 7 / 24)]  # usb_cosine(1, 4) at 1, 2, 3
    expected_groups = [(1.0, WD), (1.0, 0.0), (0.5, WD), (0.5, 0.0), (0.25, WD), (0.25, 0.0), (0.125, WD), (0.125, 0.0)]
    for groups, m in zip(steps, multipliers):
        assert [(g["lr_scale"], g["weight_decay"]) for g in groups] == expected_groups
        assert [g["lr"] for g in groups] == pytest.approx([LR * scale * m for scale, _ in expected_groups])


# --- evaluation of large images --------------------------------------------------------------------------
def test_eval_view_of_large_images_is_usbs_resize_then_centre_crop():
    """A 600x200 image in three vertical bands (red | green | blue): USB's eval at 224 px resizes the
    shorter side to 256 (768x256) and keeps the centre 224x224, inside the green band. Catches: the eval
    view squashing the whole image to 224x224 (all three bands), cropping elsewhere than the centre, or
    small images losing their plain resize."""
    bands = np.zeros((200, 600, 3), np.uint8)
    bands[:, :200, 0] = bands[:, 200:400, 1] = bands[:, 400:, 2] = 255
    out = make_views(224, hflip=False).eval(Image.fromarray(bands))
    assert out.shape == (3, 224, 224)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1)  # normalised to [-1, 1]
    assert torch.allclose(out, green.expand_as(out), atol=0.02)
    small = make_views(32, hflip=False).eval(Image.fromarray(bands))
    assert small.shape == (3, 32, 32) and small[0, :, 0].min() > 0.9 and small[2, :, -1].min() > 0.9
    assert "resize the shorter side to 256 (bilinear), centre crop 224" in describe_views(224, False).splitlines()[2]


# --- the stage passes its options on ---------------------------------------------------------------------
def test_train_stage_passes_layer_decay_and_schedule_to_the_engine(tmp_path, make_shards, one_torch_thread):
    """Catches: `zmdist train` not handing layer_decay or schedule to the engine (the lr logged at each step
    is the top group's: lr x USB's schedule; a CNN student with layer_decay < 1 is refused by name)."""
    shards, keys = make_shards([12])
    (tmp_path / "labelled.txt").write_text("\n".join(keys[:6]) + "\n")  # 2 of each of the 3 classes
    common = [f"shards={shards}", "method.name=supervised", "eval_split=train",
              f"labelled_keys={tmp_path / 'labelled.txt'}", "batch_size=4", "img_size=8", "hflip=false",
              "num_workers=0", "progress=false", "steps=4", "warmup_steps=2", "log_every=1", "eval_every=4",
              "lr=0.08", "layer_decay=0.5", "schedule=usb"]
    vit = ["student=timm:vit_tiny_patch16_224",
           "student_options={img_size: 8, patch_size: 4, depth: 2, embed_dim: 8, num_heads: 2}"]
    train.run(load_config(train.Config, None, [*common, *vit]), tmp_path / "vit")
    logged = [json.loads(x)["lr"] for x in (tmp_path / "vit" / "log.jsonl").read_text().splitlines() if '"lr"' in x]
    assert logged == pytest.approx([0.04, 0.08, 0.08 * math.cos(math.pi * 7 / 32), 0.08 * math.cos(math.pi * 7 / 16)])
    with pytest.raises(ValueError, match=r"the student \(SmallCNN\) has parameter"):
        train.run(load_config(train.Config, None, [*common, "student=cnn-tiny"]), tmp_path / "cnn")
