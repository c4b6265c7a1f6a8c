"""Backend settings: local by default, remote per workspace and per language, invalid ones fall back to local
with a warning that never shows the API key."""

from ghostls.inference.remote import RemoteConfig
from ghostls.completion.settings import Settings, parse_settings
from ghostls.server.remotes import plaintext_warning

SECRET = "sk-config-secret"


def test_local_is_the_default_and_needs_the_local_model():
    settings, warnings = parse_settings({})
    assert settings.backend is None and settings.language_backends == ()
    assert settings.backend_for(("python",)) is None
    assert settings.uses_local_model()


def test_a_remote_backend_for_the_workspace():
    settings, warnings = parse_settings({"ghostls": {"backend": {
        "kind": "remote", "url": "https://engine.internal:8000/v1", "model": "Qwen/Qwen2.5-Coder-1.5B",
        "apiKeyEnv": "TEAM_KEY", "timeoutMs": 4000, "maxRetries": 1}}})
    assert warnings == []
    remote = settings.backend
    assert remote == RemoteConfig(url="https://engine.internal:8000/v1", model="Qwen/Qwen2.5-Coder-1.5B",
                                  api_key_env="TEAM_KEY", timeout_ms=4000, max_retries=1)
    assert remote.endpoint == "https://engine.internal:8000/v1/completions"
    assert remote.template().family == "qwen"  # guessed from the model name
    assert settings.backend_for(("python",)) is remote
    assert not settings.uses_local_model()  # nothing to load here
    assert settings.prompt_budget("remote") == 1500


def test_per_language_overrides_either_way():
    remote = {"kind": "remote", "url": "http://127.0.0.1:8080", "fimTemplate": "starcoder"}
    settings, warnings = parse_settings({"backend": remote, "languageBackends": {"markdown": {"kind": "local"}}})
    assert warnings == []
    assert settings.backend_for(("markdown",)) is None
    assert settings.backend_for(("python",)).template().family == "starcoder"
    assert settings.uses_local_model()
    settings, _ = parse_settings({"languageBackends": {"python": remote}})
    assert settings.backend_for(("typescript", "typescriptreact")) is None
    assert settings.backend_for(("python",)).url == "http://127.0.0.1:8080"


def test_invalid_backends_fall_back_to_local_without_echoing_the_key():
    for bad in ({"kind": "remote", "url": "ftp://x", "apiKey": SECRET},
                {"kind": "remote", "apiKey": SECRET},
                {"kind": "cloud", "apiKey": SECRET},
                {"kind": "remote", "url": "https://x", "apiKey": SECRET, "timeoutMs": -1},
                {"kind": "remote", "url": "https://x", "apiKey": SECRET, "fimTemplate": "gpt"},
                {"kind": "remote", "url": "https://x", "apiKey": SECRET, "verifyTls": False},
                "https://x"):
        settings, warnings = parse_settings({"backend": bad})
        assert settings.backend is None, bad
        assert len(warnings) == 1 and "backend" in warnings[0], warnings
        assert SECRET not in warnings[0]
    settings, warnings = parse_settings({"languageBackends": {"go": {"url": "nope", "apiKey": SECRET}}})
    assert settings.language_backends == () and SECRET not in warnings[0] and "go" in warnings[0]


def test_the_key_stays_out_of_reprs_and_plain_http_off_the_machine_is_flagged():
    settings, _ = parse_settings({"backend": {"url": "http://10.0.0.5:8000", "apiKey": SECRET}})
    assert SECRET not in repr(settings)
    assert "unencrypted" in plaintext_warning(settings.backend)
    assert plaintext_warning(RemoteConfig(url="http://127.0.0.1:8080")) is None
    assert plaintext_warning(RemoteConfig(url="https://engine:8000")) is None
    assert Settings() == parse_settings({"backend": None})[0]
