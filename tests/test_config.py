"""Config loading: defaults < YAML < overrides, and clear errors naming the key."""

import re
from dataclasses import dataclass
from typing import Literal

import pytest

from zmdist.config import ConfigError, load_config, option, parse_override


@dataclass
class Inner:
    model: str = option("ViT-B-32", "model")
    scale: float = option(1.0, "scale")


@dataclass
class Cfg:
    shards: str = option(help="required")
    inner: Inner = option(factory=Inner, help="nested")
    batch_size: int = option(8, "batch", min=1)
    lr: float = option(0.1, "lr", min=0, min_exclusive=True, max=10)
    splits: list[str] = option(factory=list, help="splits")
    precision: Literal["fp32", "bf16"] = option("fp32", "precision")
    templates: str | list[str] = option("simple", "set or list")
    task_index: int | None = option(None, "optional")
    names: dict[str, int] = option(factory=dict, help="by name")


def test_defaults_yaml_and_overrides_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("shards: /data\nbatch_size: 16\ninner:\n  model: RN50\n")
    cfg = load_config(Cfg, f, ["inner.scale=2", "batch_size=32", "splits=[train, test]", 'templates=["a {}", "b {}"]'])
    assert cfg.shards == "/data"
    assert cfg.batch_size == 32
    assert cfg.inner.model == "RN50" and cfg.inner.scale == 2.0 and isinstance(cfg.inner.scale, float)
    assert cfg.splits == ["train", "test"]
    assert cfg.templates == ["a {}", "b {}"]
    assert cfg.task_index is None
    assert load_config(Cfg, None, ["shards=x", "task_index=3"]).task_index == 3


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'batch_sze'.*Did you mean 'batch_size'"):
        load_config(Cfg, None, ["shards=x", "batch_sze=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.modle'.*Did you mean 'inner.model'"):
        load_config(Cfg, None, ["shards=x", "inner.modle=RN50"])


def test_wrong_types_are_errors_naming_the_key():
    with pytest.raises(ConfigError, match="batch_size: expected an integer, got 'big'"):
        load_config(Cfg, None, ["shards=x", "batch_size=big"])
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        load_config(Cfg, None, ["shards=x", "batch_size=1.5"])
    with pytest.raises(ConfigError, match=r"precision: expected one of 'fp32' \| 'bf16', got 'bf61'.*'bf16'"):
        load_config(Cfg, None, ["shards=x", "precision=bf61"])
    with pytest.raises(ConfigError, match=r"splits: expected list\[str\]"):
        load_config(Cfg, None, ["shards=x", "splits=train"])
    with pytest.raises(ConfigError, match="missing required config key 'shards'"):
        load_config(Cfg, None, [])


def test_exponent_without_a_dot_is_a_float():
    """Catches: `lr=3e-3` rejected as a string (YAML 1.1 needs `3.0e-3`)."""
    assert load_config(Cfg, None, ["shards=x", "inner.scale=3e-3"]).inner.scale == 0.003
    with pytest.raises(ConfigError, match="inner.scale: expected a number, got 'big'"):
        load_config(Cfg, None, ["shards=x", "inner.scale=big"])


def test_ranges_declared_beside_fields_are_checked():
    """Catches: a range declared with option(min=..., max=...) not enforced, or off by one at the bound."""
    assert load_config(Cfg, None, ["shards=x", "batch_size=1", "lr=10"]).lr == 10
    with pytest.raises(ConfigError, match="batch_size: must be >= 1, got 0"):
        load_config(Cfg, None, ["shards=x", "batch_size=0"])
    with pytest.raises(ConfigError, match="lr: must be > 0, got 0.0"):
        load_config(Cfg, None, ["shards=x", "lr=0"])
    with pytest.raises(ConfigError, match="lr: must be <= 10, got 11.0"):
        load_config(Cfg, None, ["shards=x", "lr=11"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    """Catches: a YAML syntax error surfacing as a raw traceback without the file and line."""
    f = tmp_path / "broken.yaml"
    f.write_text("shards: /data\nbatch_size: [1, 2\nlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+, column \d+: YAML syntax error"):
        load_config(Cfg, f)


def test_a_key_given_twice_is_refused_naming_file_and_line(tmp_path):
    """Catches PyYAML's silent last-one-wins: the second `model:` replacing the first without a word."""
    f = tmp_path / "twice.yaml"
    f.write_text("shards: /data\ninner:\n  model: RN50\n  scale: 2\n  model: ViT-B-32\n")
    with pytest.raises(ConfigError, match=re.escape(f"--config {f}: line 5, column 3: key 'model' appears twice "
                                                    "(first at line 3): keep one")):
        load_config(Cfg, f)
    f.write_text("shards: /data\ninner.model: RN50\ninner:\n  model: ViT-B-32\n")
    with pytest.raises(ConfigError, match=re.escape(f"--config {f}: inner.model: given twice")):
        load_config(Cfg, f)
    f.write_text("shards: /data\nnames: {1: 1, '1': 2}\n")  # distinct in YAML, one name here
    with pytest.raises(ConfigError, match=re.escape(f"--config {f}: names.1: given twice")):
        load_config(Cfg, f)
    with pytest.raises(ConfigError, match="names: '1' named twice"):
        load_config(Cfg, None, ["shards=x", "names={1: 1, '1': 2}"])
    with pytest.raises(ConfigError, match=re.escape("override 'names={a: 1, a: 2}': key 'a' appears twice")):
        parse_override("names={a: 1, a: 2}")
    f.write_text("shards: /data\nnames: {1: 1, true: 2}\n")  # one Python dict entry
    with pytest.raises(ConfigError, match=re.escape(f"--config {f}: line 2, column 15: key True appears twice")):
        load_config(Cfg, f)


def test_a_garbled_config_file_is_one_error_naming_it(tmp_path):
    """Catches a bare UnicodeDecodeError without the file's name."""
    f = tmp_path / "garbled.yaml"
    f.write_bytes(b"shards: /data\n\x89PNG\x00\xff")
    with pytest.raises(ConfigError, match=re.escape(f"--config {f}: not UTF-8 text (byte 0x89 at offset 14)")):
        load_config(Cfg, f)


def test_bad_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(Cfg, tmp_path / "missing.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, f)


def test_parse_override():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("x=") == ("x", "")
    assert parse_override("p=/some/path.pt") == ("p", "/some/path.pt")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")
