"""The plugin's options: every default is added when the plugin is made
(the ``beet listen`` ones too), the playlist and listen options are read
into frozen settings, and a bad value stops the command with one line that
names the option."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from conftest import tiny_model, user_error

from beetsplug.soundslike.settings import (
    DEFAULTS,
    ListenSettings,
    ModelSpec,
    PlaylistSettings,
    model_slug,
    path_slug,
)


def test_every_default_is_added_when_the_plugin_is_made(beets_env):
    from beetsplug.soundslike import SoundsLikePlugin

    plugin = SoundsLikePlugin()  # no command built yet
    for key in ("listen_host", "listen_port", "listen_token", "listen_seconds",
                "listen_tls_cert", "listen_tls_key", "count", "similar", "prefix"):
        assert plugin.config[key].get() == DEFAULTS[key], key
    assert plugin.config["listen_token"].redact and plugin.config["api_key"].redact


def test_playlist_and_listen_settings(beets_env):
    plugin = beets_env.soundslike
    assert plugin.playlist_settings() == PlaylistSettings(
        count=10, max_per_artist=0, max_per_album=0, exclude="", relative_to=None,
        prefix="", similar=5,
    )
    assert plugin.listen_settings() == ListenSettings(
        host="127.0.0.1", port=8338, token="", seconds=8.0, tls_cert=None, tls_key=None,
    )
    beets_env.reconfigure(count=3, exclude=" genre:x ", relative_to="/music", listen_host=" ",
                          listen_port=0, listen_token=" secret ", listen_tls_cert="c.pem")
    playlist = beets_env.soundslike.playlist_settings()
    assert (playlist.count, playlist.exclude, playlist.relative_to) == (3, "genre:x", "/music")
    listen = beets_env.soundslike.listen_settings()
    assert (listen.host, listen.port, listen.token) == ("127.0.0.1", 0, "secret")
    assert (listen.tls_cert, listen.tls_key) == ("c.pem", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        listen.port = 1


@pytest.mark.parametrize("key, value, command, message", [
    ("count", 0, ("similar", "title:x"), "soundslike.count must be a whole number >= 1"),
    ("count", "many", ("similar", "title:x"), "soundslike.count must be a whole number >= 1"),
    ("max_per_album", -1, ("similar", "title:x"),
     "soundslike.max_per_album must be a whole number >= 0"),
    ("similar", True, ("identify", "clip.wav"), "soundslike.similar must be a whole number >= 0"),
    ("listen_port", 70000, ("listen",),
     "soundslike.listen_port must be a whole number from 0 to 65535"),
    ("listen_seconds", 0, ("listen",), "soundslike.listen_seconds must be a number of seconds > 0"),
])
def test_bad_values_name_the_option(beets_env, key, value, command, message):
    beets_env.reconfigure(**{key: value})
    assert user_error(beets_env, *command) == message


def test_command_line_and_config_values_are_checked_alike(beets_env):
    # -n is checked as before; a half pair of certificates from the config
    # is refused like one from the command line.
    assert user_error(beets_env, "similar", "title:x", "-n", "0") == "-n must be 1 or more"
    beets_env.reconfigure(listen_tls_cert="/nowhere/cert.pem")
    message = user_error(beets_env, "listen")
    assert message == "give both --tls-cert and --tls-key for https"


def test_a_model_folder_is_named_by_its_content_not_its_place(model_dir, tmp_path):
    """A copy, a move or a new folder name keeps the name (and so the
    vectors); other weights or another feature extractor get another."""
    copy = shutil.copytree(model_dir, tmp_path / "elsewhere" / "model")
    assert model_slug(str(copy)) == model_slug(model_dir)
    assert model_slug(model_dir).startswith("wav2vec2-")
    assert path_slug(str(copy)) != path_slug(model_dir)
    other = tiny_model.build_tiny_model(str(tmp_path / "other"), layers=3, hidden=64, seed=1)
    assert model_slug(other) != model_slug(model_dir)
    settings_file = copy / "preprocessor_config.json"
    settings_file.write_text(settings_file.read_text().replace('"do_normalize": true',
                                                               '"do_normalize": false'))
    assert model_slug(str(copy)) != model_slug(model_dir)
    spec = ModelSpec(model_dir, 2, "mean")
    assert spec.legacy_collection == f"soundslike_{path_slug(model_dir)}_l2_mean"
    assert ModelSpec("facebook/wav2vec2-base", 2, "mean").legacy_collection is None
