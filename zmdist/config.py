"""Typed stage configs from YAML files plus ``key=value`` overrides.

Every stage declares its options as a dataclass whose fields carry a ``help`` string (``option()``).
``load_config`` merges, in order, the dataclass defaults, ``--config FILE.yaml``, then dotted
``key=value`` overrides (values parsed as YAML, so ``3`` is an int and ``[a, b]`` a list), and validates
the result: an unknown key or a value of the wrong type is an error that names the key, says what was
expected, and suggests the closest known key. Nothing is silently ignored.

A section can be chosen from a registry by its ``name`` key (``choice()``): ``method.name=fixmatch
method.p_cutoff=0.9`` builds the config dataclass registered as ``fixmatch``, so each plug-in (method,
backend) owns its options and a key that belongs to another plug-in is an error naming the chosen one.

A config dataclass may keep an option's older spelling working: a class attribute ``ALIASES = {"old":
"new.dotted"}`` makes ``old`` (in files, overrides and ``--old`` flags) mean ``new.dotted``; the key is
rewritten before the file and the overrides are merged, so ``old=x`` and ``new.dotted=y`` set one option.
An alias that is also a section's name (``student`` for ``student.name``) applies to a plain value only
(``student=cnn-tiny``); a mapping there is the section (``student: {name: cnn-tiny}``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key and what to do."""


class ConfigFileError(ConfigError):
    """The config file itself cannot be read (missing, not UTF-8, not YAML, a key twice); names the file."""


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping that names a key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a mapping naming a key twice.

    Why: PyYAML keeps the last of two equal keys silently, so a config or sweep file listing an option,
    a method or a dataset twice would run with one of them and no word about the other."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` entries may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:  # equal in Python is twice (`1:` and `true:` would be one dict entry)
                earlier = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if earlier is not key_node:
                raise DuplicateKeyError(
                    None, None, f"key {key!r} appears twice (first at line {earlier.start_mark.line + 1}): "
                    "keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


def yaml_load(text: str) -> Any:
    """``text`` as YAML with duplicate keys refused (``UniqueKeyLoader``)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None,
           min: float | None = None, max: float | None = None, min_exclusive: bool = False) -> Any:
    """A dataclass field with a help string (shown in ``--help``); ``factory`` for mutable defaults.

    ``min``/``max`` declare the field's valid range beside it (inclusive; ``min_exclusive`` makes the lower
    bound strict, e.g. a learning rate ``> 0``); a value outside is a ``ConfigError`` naming the key, as a
    wrong type is. ``None`` values of optional fields are not range-checked."""
    metadata = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _check_range(value: Any, f: dataclasses.Field, key: str) -> None:
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    strict = f.metadata.get("min_exclusive", False)
    if low is not None and (value <= low if strict else value < low):
        raise ConfigError(f"{key}: must be {'>' if strict else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{key}: must be <= {high}, got {value!r}")


def choice(registry: Any, default: str, help: str = "") -> Any:
    """A section whose dataclass is picked from ``registry`` (a ``zmdist.registry.Registry`` of config
    dataclasses, each with a ``name`` field) by the section's ``name`` key; ``default`` when absent."""
    return dataclasses.field(default_factory=lambda: registry.get(default)(),
                             metadata={"help": help, "registry": registry, "default_name": default})


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as YAML (an empty value is the empty string)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (dotted keys for nested options)")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml_load(raw) if raw != "" else ""
    except DuplicateKeyError as err:
        raise ConfigError(f"override {text!r}: {err.problem}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list[{type_name(get_args(tp)[0])}]"
    if origin is dict:
        return f"mapping of name -> {type_name(get_args(tp)[1])}"
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where lossless (int -> float)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section of options, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            try:
                return _coerce(value, arm, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: expected one of {type_name(tp)}, got {value!r}.{hint}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r} (write lists as [a, b])")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of name: value, got {value!r}")
        _, item = get_args(tp)
        names = [str(k) for k in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # e.g. `1:` and `"1":`, distinct in YAML, one name here
            raise ConfigError(f"{key}: {', '.join(map(repr, twice))} named twice; give each entry its own name")
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:  # free-form (e.g. another stage's options, checked when that stage's config is built)
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string; it is a number here
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported option type {tp!r}")


def _build(cls: type[T], values: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            known = ", ".join(prefix + name for name in fields)
            raise ConfigError(f"unknown config key '{prefix}{key}'.{hint} Known keys: {known}")
    kwargs = {}
    for name, f in fields.items():
        if "registry" in f.metadata:
            kwargs[name] = _build_choice(f, values.get(name, {}), f"{prefix}{name}")
        elif name in values:
            kwargs[name] = _coerce(values[name], hints[name], prefix + name)
            _check_range(kwargs[name], f, prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                kwargs[name] = _build(hints[name], {}, prefix=f"{prefix}{name}.")
            else:
                raise ConfigError(f"missing required config key {prefix}{name!r}: {f.metadata.get('help', '')}")
    return cls(**kwargs)


def _build_choice(f: dataclasses.Field, values: Any, key: str) -> Any:
    """Build a ``choice()`` section: the dataclass registered under ``values["name"]``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: expected a section of options (e.g. {key}.name=...), got {values!r}")
    registry = f.metadata["registry"]
    name = values.get("name", f.metadata["default_name"])
    if name not in registry:
        close = difflib.get_close_matches(str(name), registry.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}.name: unknown {registry.kind} {name!r}.{hint} Registered: {', '.join(registry.names())}")
    cls = registry.get(name)
    own = {fl.name for fl in dataclasses.fields(cls)}
    foreign = [k for k in values if k not in own]
    if foreign:
        owners = {k: [n for n in registry.names() if k in {fl.name for fl in dataclasses.fields(registry.get(n))}]
                  for k in foreign}
        k = foreign[0]
        where = (f" It is an option of {', '.join(owners[k])}, not of {registry.kind} {name!r}." if owners[k]
                 else "")
        close = difflib.get_close_matches(k, sorted(own), n=1, cutoff=0.5)
        hint = f" Did you mean '{key}.{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key '{key}.{k}' for {registry.kind} {name!r}.{where}{hint} "
                          f"Known keys: {', '.join(f'{key}.{o}' for o in sorted(own))}")
    return _build(cls, {**values, "name": name}, prefix=f"{key}.")


def _section_type(node: Any, name: str) -> Any:
    """The dataclass of option section ``name`` of ``node`` (None: a plain option, a choice() section whose
    class depends on its ``name``, or no such field)."""
    fields = {f.name: f for f in dataclasses.fields(node)}
    if name not in fields or "registry" in fields[name].metadata:
        return None
    tp = typing.get_type_hints(node)[name]
    return tp if dataclasses.is_dataclass(tp) else None


def canonical_key(cls: type, key: str, value: Any) -> str:
    """``key`` (dotted) with the older spellings its dataclasses declare in ``ALIASES`` replaced by the keys
    they stand for (see the module docstring); ``value`` decides an alias that is also a section's name."""
    parts, done, node = key.split("."), [], cls
    while parts and node is not None:
        part = parts.pop(0)
        aliases = getattr(node, "ALIASES", {})
        is_field = part in {f.name for f in dataclasses.fields(node)}
        path = aliases[part].split(".") if part in aliases and (
            not is_field or (not parts and not isinstance(value, dict))) else [part]
        done += path
        for name in path:
            node = _section_type(node, name) if node is not None else None
    return ".".join(done + parts)


def iter_aliases(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, str]]:
    """Every (older spelling, dotted key it stands for) that ``cls`` and its option sections declare."""
    for old, new in getattr(cls, "ALIASES", {}).items():
        yield f"{prefix}{old}", f"{prefix}{new}"
    for f in dataclasses.fields(cls):
        section = _section_type(cls, f.name)
        if section is not None:
            yield from iter_aliases(section, prefix=f"{prefix}{f.name}.")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None, *,
                what: str = "--config") -> T:
    """Defaults <- YAML file <- dotted overrides, validated into ``cls``.

    ``what`` names the file in errors about the file itself (``ConfigFileError``), e.g. ``sweep``."""
    tree: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigFileError(f"{what} {p}: no such file")
        try:
            loaded = yaml_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigFileError(f"{what} {p}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                                  f"{err.start}): the file is garbled or not YAML; save it as UTF-8 YAML") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err)
            if isinstance(err, DuplicateKeyError):
                raise ConfigFileError(f"{what} {p}:{where}: {problem}") from None
            raise ConfigFileError(f"{what} {p}:{where}: YAML syntax error: {problem}; fix the file there (one cut "
                                  "short or garbled: restore it from where it came from)") from None
        if not isinstance(loaded, dict):
            raise ConfigFileError(f"{what} {p}: expected a mapping of options at the top level")
        try:
            flat = flatten(loaded)
        except ConfigError as err:
            raise ConfigFileError(f"{what} {p}: {err}") from None
        spelt: dict[str, str] = {}
        for key, value in flat.items():
            canonical = canonical_key(cls, key, value)
            if canonical in spelt:
                raise ConfigFileError(f"{what} {p}: {spelt[canonical]} and {key} are the same option ({canonical}); "
                                      "keep one")
            spelt[canonical] = key
            _set_dotted(tree, canonical, value)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, canonical_key(cls, key, value), value)
    return _build(cls, tree)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested option sections as dotted keys (``{method: {name: x}}`` -> ``{"method.name": x}``).

    An option given twice (``method.name: x`` beside ``method: {name: y}``, or ``1:`` beside ``'1':``) is
    an error naming it, not one of the two kept."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        inner = flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value}
        for name in inner:
            if name in flat:
                raise ConfigError(f"{name}: given twice (a dotted key beside its section, or keys like 1 and '1'); "
                                  "keep one")
        flat.update(inner)
    return flat


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain data (for ``config.yaml`` and ``summary.json``)."""
    return dataclasses.asdict(cfg)


def iter_options(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, Any, dataclasses.Field]]:
    """Every leaf option of ``cls`` as (dotted name, type, field): the CLI turns these into flags.

    A ``choice()`` section yields ``SECTION.name`` (a Literal of the registered names), then every option
    of every registered dataclass once, its help prefixed with the names that accept it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if "registry" in f.metadata:
            yield from _iter_choice(f, f"{prefix}{f.name}.")
        elif dataclasses.is_dataclass(tp):
            yield from iter_options(tp, prefix=f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, f


def _iter_choice(f: dataclasses.Field, prefix: str) -> typing.Iterator[tuple[str, Any, dataclasses.Field]]:
    registry = f.metadata["registry"]
    names = registry.names()
    name_field = dataclasses.field(default=f.metadata["default_name"], metadata={"help": f.metadata.get("help", "")})
    yield f"{prefix}name", Literal[tuple(names)], name_field  # type: ignore[misc]
    seen: dict[str, tuple[Any, dataclasses.Field, list[str]]] = {}
    for name in names:
        sub = registry.get(name)
        sub_hints = typing.get_type_hints(sub)
        for g in dataclasses.fields(sub):
            if g.name == "name":
                continue
            seen.setdefault(g.name, (sub_hints[g.name], g, []))[2].append(name)
    for key, (tp, g, owners) in seen.items():
        shown = dataclasses.field(default=g.default, default_factory=g.default_factory,  # type: ignore[arg-type]
                                  metadata={"help": f"[{', '.join(owners)}] {g.metadata.get('help', '')}"})
        yield f"{prefix}{key}", tp, shown


def describe_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "required"
