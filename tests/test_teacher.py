"""Teacher loading through open_clip and the zero-shot classifier recipe."""

import json

import pytest
import torch
import torch.nn.functional as F

from zmdist.teacher import build_zeroshot_classifier, get_templates, load_teacher


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return load_teacher("zmdist-micro-vit", "random")


def test_classifier_is_mean_of_normalised_prompts_renormalised(teacher):
    classes, templates = ["cat", "dog", "axolotl"], ["a photo of a {}.", "a drawing of a {}."]
    w = build_zeroshot_classifier(teacher.model, teacher.tokenizer, classes, templates, batch_size=4)
    assert w.shape == (3, 32)
    with torch.no_grad():
        for i, c in enumerate(classes):
            e = F.normalize(teacher.model.encode_text(teacher.tokenizer([t.format(c) for t in templates])), dim=-1)
            expected = F.normalize(e.mean(0), dim=-1)
            assert torch.allclose(w[i], expected, atol=1e-5)
    assert torch.allclose(w.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_local_checkpoint_loads_through_pretrained_path(tmp_path, teacher):
    from safetensors.torch import save_file

    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, str(path))
    again = load_teacher("zmdist-micro-vit", str(path))
    for (name, a), b in zip(teacher.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    x = teacher.preprocess(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (8, 8)))
    assert x.shape == (3, 16, 16)


def test_clear_errors_for_bad_teacher_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model 'zmdist-tiny-vt'.*zmdist-tiny-vit"):
        load_teacher("zmdist-tiny-vt")
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt does not exist"):
        load_teacher("zmdist-micro-vit", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown template set 'digit'.*digits"):
        get_templates("digit")
    with pytest.raises(ValueError, match="exactly one"):
        get_templates(["no placeholder"])


def test_checkpoint_of_another_architecture_names_the_model_it_looks_like(tmp_path, teacher):
    """open_clip alone fails deep inside ("pos_embed width changed!"); we say what the checkpoint is."""
    from safetensors.torch import save_file

    path = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=r"another architecture than teacher.model=zmdist-tiny-vit: "
                                         r"it looks like zmdist-micro-vit"):
        load_teacher("zmdist-tiny-vit", str(path))
    pt = tmp_path / "micro.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in teacher.model.state_dict().items()}}, pt)
    with pytest.raises(ValueError, match="it looks like zmdist-micro-vit"):
        load_teacher("zmdist-tiny-vit", str(pt))
    load_teacher("zmdist-micro-vit", str(pt))  # the right model name loads the same file


def _save_open_clip_folder(model: torch.nn.Module, folder) -> None:
    """Write ``model`` as open_clip's ``save_for_hf`` does (config JSON + safetensors weights), minus the
    tokenizer files that only HF tokenizers have: the layout of a ``local-dir:`` folder and a hub repo."""
    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_config_for_hf(model, folder / "open_clip_config.json", open_clip.get_model_config("zmdist-micro-vit"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_local_dir_teacher_loads_the_folder_weights_and_tokenizer(tmp_path, teacher):
    folder = tmp_path / "micro"
    _save_open_clip_folder(teacher.model, folder)
    again = load_teacher(f"local-dir:{folder}", seed=7)  # the seed must not matter: the weights come from the folder
    _assert_same_weights(teacher.model, again.model)
    assert again.tokenizer(["a photo of a cat."]).shape == (1, 12)  # the folder config's context length
    image = again.preprocess(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (8, 8)))
    assert image.shape == (3, 16, 16)


def test_local_dir_errors_name_the_path_and_the_missing_file(tmp_path, teacher):
    with pytest.raises(FileNotFoundError, match=r"local-dir:.*nowhere: folder .*nowhere does not exist"):
        load_teacher(f"local-dir:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.open_clip_config.json is missing"):
        load_teacher(f"local-dir:{tmp_path / 'empty'}")
    folder = tmp_path / "micro"
    _save_open_clip_folder(teacher.model, folder)
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no weights file; put open_clip_model.safetensors or "
                                                r"open_clip_pytorch_model.bin"):
        load_teacher(f"local-dir:{folder}")
    with pytest.raises(ValueError, match=r"teacher.pretrained='laion2b' is set, but teacher.model=local-dir:"):
        load_teacher(f"local-dir:{folder}", "laion2b")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache folder, with huggingface_hub in offline mode and pointed at it (the library reads
    ``HF_HUB_OFFLINE``/``HF_HUB_CACHE`` at import, so its constants are patched as well as the environment)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _add_to_hub_cache(cache, repo: str, model: torch.nn.Module, commit: str) -> None:
    """Lay out ``repo`` at ``commit`` as huggingface_hub's cache does (snapshots/<commit>/ + refs/main)."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    _save_open_clip_folder(model, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hf_hub_teacher_resolves_from_the_cache_offline(tmp_path, teacher, offline_hub):
    from zmdist.teacher.loading import teacher_fingerprint

    _add_to_hub_cache(offline_hub, "zmdist/micro", teacher.model, "0123456789abcdef0123456789abcdef01234567")
    hub = load_teacher("hf-hub:zmdist/micro", cache_dir=str(offline_hub))
    _assert_same_weights(teacher.model, hub.model)
    assert hub.tokenizer(["a photo of a dog."]).shape == (1, 12)
    by_env = load_teacher("hf-hub:zmdist/micro")  # cache_dir empty: HF_HUB_CACHE
    _assert_same_weights(teacher.model, by_env.model)
    fingerprint = teacher_fingerprint("hf-hub:zmdist/micro", None, cache_dir=str(offline_hub))
    assert fingerprint == teacher_fingerprint("hf-hub:zmdist/micro", None)
    folder = tmp_path / "copy"
    _save_open_clip_folder(teacher.model, folder)
    local = teacher_fingerprint(f"local-dir:{folder}", None)
    assert (fingerprint["architecture"], fingerprint["weights"]) == (local["architecture"], local["weights"])
    with pytest.raises(FileNotFoundError, match=r"hf-hub:zmdist/absent: .*HF_HUB_OFFLINE=1"):
        load_teacher("hf-hub:zmdist/absent", cache_dir=str(offline_hub))


def test_local_dir_fingerprint_follows_the_file_contents_not_the_path(tmp_path, teacher):
    from zmdist.teacher.loading import teacher_fingerprint

    _save_open_clip_folder(teacher.model, tmp_path / "a")
    _save_open_clip_folder(teacher.model, tmp_path / "moved")
    _save_open_clip_folder(load_teacher("zmdist-micro-vit", "random", seed=1).model, tmp_path / "other")
    fingerprint = {d: teacher_fingerprint(f"local-dir:{tmp_path / d}", None) for d in ("a", "moved", "other")}
    assert fingerprint["a"] == fingerprint["moved"]
    assert fingerprint["a"]["weights"] != fingerprint["other"]["weights"]
    assert fingerprint["a"]["architecture"] == fingerprint["other"]["architecture"]


def test_slash_spelling_of_a_registered_name_gets_its_own_config_and_tokenizer(teacher):
    """open_clip builds ``ViT-B/32`` as ``ViT-B-32`` but would tokenize it with the default 77-token tokenizer."""
    slashed = load_teacher("zmdist/micro-vit", "random")
    assert slashed.name == "zmdist-micro-vit"
    assert slashed.tokenizer(["a cat"]).shape == (1, 12)
    _assert_same_weights(teacher.model, slashed.model)


def test_an_empty_pretrained_is_refused_before_the_output_folder_is_made(tmp_path, make_shards, capsys):
    """The random-teacher refusal. Catches `zmdist embed --shards S --out E` embedding with a random ViT-B-32
    (the default model) whose pseudolabels are at chance, with one open_clip warning as the only sign."""
    from zmdist.cli import main
    from zmdist.config import ConfigError

    shards, _ = make_shards([4])
    out = tmp_path / "emb"
    assert main(["embed", "--shards", str(shards), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("zmdist embed: error: teacher.pretrained is empty, so "
                                                         "teacher.model=ViT-B-32 would have random weights")
    assert "set teacher.pretrained to an open_clip tag (e.g. " in err  # from open_clip's table of tags
    assert "list_pretrained_tags_by_model(\"ViT-B-32\")" in err and "hf-hub:ORG/REPO or local-dir:PATH" in err
    assert "teacher.pretrained=random asks for random weights on purpose" in err
    assert not out.exists()  # refused before anything was written
    for empty in (None, ""):
        with pytest.raises(ConfigError, match=r"teacher.pretrained is empty, so teacher.model=zmdist-micro-vit "
                                              r"would have random weights.*teacher.pretrained=random"):
            load_teacher("zmdist-micro-vit", empty)


def test_random_asks_for_the_seeded_weights_an_empty_pretrained_gave(tmp_path, teacher, monkeypatch):
    """``random`` builds what an empty ``pretrained`` built before (open_clip's init under the seed) and has
    the fingerprint runs made then recorded, so their folders resume; it is no pretrained tag or file."""
    import open_clip

    from zmdist.teacher.loading import teacher_fingerprint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)  # what load_teacher did for an empty pretrained before `random` existed
        before = open_clip.create_model("zmdist-micro-vit")
    _assert_same_weights(before, load_teacher("zmdist-micro-vit", "random", seed=3).model)
    fingerprint = teacher_fingerprint("zmdist-micro-vit", "random", 3)
    assert fingerprint["weights"] == "random, seed 3"  # the entry an old embed_info.json holds
    assert fingerprint == teacher_fingerprint("zmdist-micro-vit", "", 3) == teacher_fingerprint("zmdist-micro-vit", None, 3)
    (tmp_path / "random").write_bytes(b"not a checkpoint")  # `random` wins over a file of that name
    monkeypatch.chdir(tmp_path)
    _assert_same_weights(teacher.model, load_teacher("zmdist-micro-vit", "random").model)
    _save_open_clip_folder(teacher.model, tmp_path / "micro")
    with pytest.raises(ValueError, match=r"teacher.pretrained='random' is set, but teacher.model=local-dir:"):
        load_teacher(f"local-dir:{tmp_path / 'micro'}", "random")


def test_an_embedding_run_that_recorded_an_empty_pretrained_still_pseudolabels_and_resumes(tmp_path, make_shards):
    """Runs made before `random` had to be asked for record ``"pretrained": ""`` for their random teacher:
    pseudolabel (prompt-tune, transfer: the same load_recorded_teacher) must rebuild that teacher, and embed
    with ``random`` must resume the folder, not refuse it as another teacher."""
    from zmdist.config import load_config
    from zmdist.formats import EMBED_INFO_FILE
    from zmdist.stages import embed, pseudolabel

    shards, keys = make_shards([6, 5])
    emb = tmp_path / "emb"
    options = [f"shards={shards}", "teacher.model=zmdist-micro-vit", "teacher.pretrained=random", "seed=2",
               "num_workers=0", "progress=false"]
    embed.run(load_config(embed.Config, None, options), emb)
    info = json.loads((emb / EMBED_INFO_FILE).read_text())
    assert info["teacher"]["pretrained"] == "random"
    info["teacher"]["pretrained"] = ""  # as an older zmdist wrote it
    (emb / EMBED_INFO_FILE).write_text(json.dumps(info))

    labelled = pseudolabel.run(load_config(pseudolabel.Config, None, [f"embeddings={emb}"]), tmp_path / "pl")
    assert labelled["samples"] == len(keys)
    assert json.loads((tmp_path / "pl" / pseudolabel.INFO_FILE).read_text())["teacher_fingerprint"] == \
        info["teacher_fingerprint"]
    again = embed.run(load_config(embed.Config, None, options), emb)
    assert again["shards_written"] == 0 and again["complete"]
