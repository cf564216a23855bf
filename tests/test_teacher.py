"""Teacher loading through open_clip and the zero-shot classifier recipe."""

import pytest
import torch
import torch.nn.functional as F

from zmdist.teacher import build_zeroshot_classifier, get_templates, load_teacher


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return load_teacher("zmdist-micro-vit")


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
