"""``beet mixes``: write the configured sounds-like mixes into
``soundslike.playlist_dir``; :func:`auto_rewrite` rewrites them once at the
end of an import or ``beet embed`` that changed the library (with
``auto``).

Each mix is a ``beet similar`` run: its entry's keys are the similar
command's own options under their long names, so a key means in a mix what
it means on the command line. Comparing, reporting and atomic writing are
:mod:`..mixes`.
"""

from __future__ import annotations

from beets import ui
from beets.ui import Subcommand

from .common import fatal_errors, guarded


def command(plugin) -> Subcommand:
    cmd = Subcommand("mixes", help="write the sounds-like mixes of soundslike.mixes")
    cmd.parser.usage = cmd.parser.usage.replace("[options]", "[options] [NAME...]")
    cmd.parser.usage += (
        "\n\nWrite every mix configured in soundslike.mixes (or the NAMEd ones)"
        "\nas NAME.m3u into soundslike.playlist_dir. An unchanged mix is not"
        "\ntouched; a mix whose query matches nothing keeps its old file."
    )
    cmd.parser.add_option(
        "-p", "--pretend", action="store_true", default=False,
        help="show what would change in each mix, and write nothing",
    )
    cmd.func = guarded(plugin, run)
    return cmd


def run(plugin, lib, opts, args) -> None:
    from ..mixes import MixConfigError, select

    mix_settings = load(plugin)
    if not mix_settings.mixes:
        raise ui.UserError(
            "soundslike: no mixes configured: add a soundslike.mixes list "
            "(docs/usage.md, 'Mixes kept current')"
        )
    try:
        chosen = select(mix_settings.mixes, args)
    except MixConfigError as exc:
        raise ui.UserError(f"soundslike: {exc}")
    results = rewrite(plugin, lib, chosen, mix_settings.playlist_dir, opts.pretend)
    for result in results:
        for line in result.describe(verbose=opts.pretend):
            ui.print_(line)
    if opts.pretend:
        ui.print_("(pretend: nothing written)")


def auto_rewrite(plugin, lib) -> None:
    """Rewrite every mix once, at the end of a command that changed the
    library; a problem is a warning, never a failed import."""
    try:
        mix_settings = load(plugin)
        if not mix_settings.mixes:
            return
        results = rewrite(plugin, lib, mix_settings.mixes, mix_settings.playlist_dir)
    except (ui.UserError, *fatal_errors()) as exc:
        plugin.log.warning("mixes not rewritten: {}", exc)
        return
    for result in results:
        line = result.describe(verbose=False)[0]
        if result.written:
            plugin.log.info("rewrote {}", line)
        elif result.state == "kept":
            plugin.log.warning("{}", line)


def load(plugin):
    """The validated ``playlist_dir`` and ``mixes``."""
    from ..settings import ConfigError, load_mix_settings

    try:
        return load_mix_settings(plugin.config, similar_keys(plugin))
    except ConfigError as exc:
        raise ui.UserError(f"soundslike: {exc}")


def rewrite(plugin, lib, mixes, playlist_dir, pretend: bool = False) -> list:
    """Compute each mix and (unless ``pretend``) write those that changed."""
    from ..mixes import MixError, plan, write

    parser = similar_parser(plugin)
    try:
        results = plan(mixes, playlist_dir, lambda mix: mix_text(plugin, lib, parser, mix))
        if not pretend:
            write(results)
    except MixError as exc:
        raise ui.UserError(f"soundslike: {exc}")
    return results


def mix_text(plugin, lib, parser, mix) -> str:
    """The M3U text of one mix, made as ``beet similar`` makes it."""
    from ..mixes import MixSkipped
    from ..playlist import PlaylistError
    from . import similar

    opts = parser.get_default_values()
    for dest, value in mix.options.items():
        setattr(opts, dest, value)
    try:
        items = similar.playlist_items(plugin, lib, opts, list(mix.query))
    except (ui.UserError, PlaylistError) as exc:
        raise MixSkipped(str(exc).removeprefix("soundslike: "))
    return similar.m3u_text(plugin.playlist_settings(), items, opts, header=True)


def similar_parser(plugin):
    from . import similar

    return similar.command(plugin).parser


def similar_keys(plugin) -> dict:
    """The mix keys: every ``beet similar`` option by its long name."""
    from ..mixes import OptionSpec

    keys = {}
    for option in similar_parser(plugin).option_list:
        name = option.get_opt_string()
        if option.action == "help" or not name.startswith("--"):
            continue
        if option.action == "store_true":
            kind = "flag"
        elif option.action == "append":
            kind = "texts"
        elif option.type in ("int", "float"):
            kind = option.type
        else:
            kind = "text"
        keys[name[2:].replace("-", "_")] = OptionSpec(option.dest, kind)
    return keys
