"""A stage's options, declared once: each field of its frozen config dataclass carries its help, its
allowed values (choices, a range) and how it is spelled on the command line. The CLI's options, the
pipeline file's keys and their checks, and the arguments the pipeline passes to the stage are all read
from that declaration (see :class:`squeezeedge.stages.quantize.QuantizeConfig`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from squeezeedge.errors import InputError

KIND_WORDS = {str: "text", int: "an integer", float: "a number", bool: "true or false", Path: "a path"}


class WrongType(InputError):
    """A value of the wrong kind (the command line reports it as a usage error, exit 2)."""


def option(default: Any, help: str, *, kind: type = str, choices: tuple | None = None,
           low: float | None = None, high: float | None = None, open_range: bool = False,
           flag: str | None = None, many: str | None = None, none: bool = False, cli: bool = True,
           in_file: bool = True, key: str | None = None) -> Any:
    """A config field with its declaration. ``kind``: the value's type (str, int, float, bool, Path);
    ``choices`` / ``low``..``high`` (``open_range``: both ends excluded): allowed values; ``flag``: a
    boolean's "--on/--off" spelling; ``many``: a tuple's CLI form, "repeat" (the option given again) or
    "comma" (one comma list); ``none``: the word 'none' means None (or the empty tuple); ``cli`` /
    ``in_file``: whether it is a command-line option / a pipeline file key; ``key``: the file's name for
    it when not the field's."""
    meta = dict(help=help, kind=kind, choices=choices, low=low, high=high, open_range=open_range, flag=flag,
                many=many, none=none, cli=cli, in_file=in_file, key=key)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` that carry a declaration."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def cli_name(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def check(f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` for field ``f`` converted (a word 'none', a comma list, a number for a float) and checked
    against its declaration; InputError naming ``where`` and the allowed values otherwise."""
    m = f.metadata
    if m["none"] and (value is None or (isinstance(value, str) and value.strip().lower() == "none")):
        return () if m["many"] else None
    if m["many"]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise InputError(f"{where} must be a list of {', '.join(m['choices'])}" + (" or 'none'" if m["none"] else ""))
        return tuple(dict.fromkeys(_one(f, v.strip() if isinstance(v, str) else v, where) for v in items if v != ""))
    return _one(f, value, where)


def check_config(cfg) -> None:
    """Every command-line option of a config instance checked against its declaration (a config built in
    Python, not through :func:`from_cli`, gets the same checks); InputError on the first bad one."""
    for f in declared(type(cfg)):
        value = getattr(cfg, f.name)
        if f.metadata["cli"] and value is not None:
            check(f, value, cli_name(f))


def _one(f: dataclasses.Field, value: Any, where: str) -> Any:
    m = f.metadata
    kind = m["kind"]
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is Path and isinstance(value, str):
        value = Path(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WrongType(f"{where}: {value!r} is not {KIND_WORDS[kind]}" + (" or 'none'" if m["none"] else ""))
    if m["choices"] is not None and value not in m["choices"]:
        raise InputError(f"unknown {where} {value!r} ({', '.join(m['choices'])}"
                         + (", or none)" if m["none"] else ")"))
    low, high = m["low"], m["high"]
    if low is not None and (value <= low if m["open_range"] else value < low) \
            or high is not None and (value >= high if m["open_range"] else value > high):
        span = f"between {low:g} and {high:g} ({'exclusive' if m['open_range'] else 'inclusive'})" \
            if low is not None and high is not None else f"{'>' if m['open_range'] else '>='} {low:g}"
        raise InputError(f"{where} must be {span}, got {value}")
    return value


def click_options(cls) -> Callable:
    """Decorator: one click option per command-line field of ``cls``, with its help, default and choices."""
    import click

    def wrap(fn):
        for f in reversed([f for f in declared(cls) if f.metadata["cli"]]):
            m = f.metadata
            text = m["help"]
            if m["flag"]:
                fn = click.option(m["flag"], f.name, is_flag=True, default=f.default,
                                  show_default=f.default is not None and "/" in m["flag"], help=text)(fn)
            elif m["many"] == "repeat":
                fn = click.option(cli_name(f), f.name, type=click.Choice(m["choices"]), multiple=True,
                                  help=text)(fn)
            elif m["many"] == "comma" or m["none"]:
                shown = ",".join(f.default) if isinstance(f.default, tuple) else f.default
                fn = click.option(cli_name(f), f.name, default=None if shown is None else str(shown),
                                  show_default=shown is not None, metavar="VALUE", help=text)(fn)
            else:
                kind = (click.Choice(m["choices"]) if m["choices"] else click.Path(path_type=Path)
                        if m["kind"] is Path else m["kind"])
                fn = click.option(cli_name(f), f.name, type=kind, default=f.default,
                                  show_default=f.default is not None, help=text)(fn)
        return fn
    return wrap


def from_cli(cls, values: dict, **fixed):
    """A ``cls`` from the command line's values (text forms converted and checked), plus ``fixed``."""
    import click

    kwargs = dict(fixed)
    for f in declared(cls):
        if f.metadata["cli"] and f.name in values:
            try:
                kwargs[f.name] = check(f, values[f.name], cli_name(f)) if values[f.name] is not None else None
            except WrongType as exc:
                raise click.BadParameter(str(exc).removeprefix(cli_name(f) + ": "), param_hint=cli_name(f)) from None
    return cls(**kwargs)


def file_keys(cls) -> dict[str, dataclasses.Field]:
    """The pipeline-file keys of ``cls``: key -> field."""
    return {f.metadata["key"] or f.name: f for f in declared(cls) if f.metadata["in_file"]}


def read_section(cls, table, path: Path, section: str) -> dict:
    """A pipeline file's [section] of ``cls``'s options, every value checked as the command line checks it;
    relative paths are read from the file's directory. Returns {key: value}."""
    keys = file_keys(cls)
    if not isinstance(table, dict):
        raise InputError(f"{path}: '{section}' must be a table ([{section}])")
    out, base = {}, Path(path).parent
    for k, v in table.items():
        if k not in keys:
            raise InputError(f"{path}: unknown key '{k}' in [{section}] (known: {', '.join(keys)})")
        out[k] = check(keys[k], v, f"{path}: [{section}] {k}")
        if isinstance(out[k], Path) and not out[k].expanduser().is_absolute():
            out[k] = (base / out[k].expanduser()).resolve()
    return out


def to_args(cls, values: dict) -> list:
    """Command-line arguments that give the stage ``values`` ({file key: value}, checked against ``cls``)."""
    args: list = []
    for name, value in values.items():
        f = file_keys(cls)[name]
        m = f.metadata
        if m["flag"]:
            on, _, off = m["flag"].partition("/")
            if value is not None and (value or off):
                args.append(on if value else off)
        elif m["many"] == "repeat":
            for v in value:
                args += [cli_name(f), v]
        elif m["many"] == "comma":
            args += [cli_name(f), ",".join(value) if value else "none"]
        else:
            args += [cli_name(f), "none" if value is None else value]
    return args
