"""Settings from the client: camelCase or snake_case, invalid values fall back with one warning each."""

from ghostls.completion.settings import Settings, parse_settings


def test_defaults_when_no_options():
    settings, warnings = parse_settings(None)
    assert settings == Settings()
    assert warnings == []


def test_camel_and_snake_case_and_the_ghostls_section():
    settings, warnings = parse_settings({"ghostls": {"maxLines": 3, "debounce_ms": 0, "provider": "cpu"}})
    assert (settings.max_lines, settings.debounce_ms, settings.provider) == (3, 0, "cpu")
    assert warnings == []


def test_invalid_values_fall_back_to_the_default_with_a_warning():
    settings, warnings = parse_settings({"maxLines": "many", "provider": "tpu", "enable": "yes",
                                         "maxNewTokens": 10**9, "disabledLanguages": "python"})
    assert settings == Settings()
    assert len(warnings) == 5
    assert any("maxLines" in w and "12" in w for w in warnings)
    settings, warnings = parse_settings({"fimTemplate": "bogus"})
    assert settings.fim_template == "auto" and len(warnings) == 1 and "fimTemplate" in warnings[0]


def test_unknown_keys_are_reported():
    _, warnings = parse_settings({"frobnicate": True})
    assert warnings == ["ghostls: unknown setting 'frobnicate' ignored"]


def test_changes_apply_on_top_of_the_current_settings():
    first, _ = parse_settings({"maxLines": 4})
    second, _ = parse_settings({"debounceMs": 0}, first)
    assert (second.max_lines, second.debounce_ms) == (4, 0)


def test_prompt_budget_depends_on_the_provider_unless_set():
    assert Settings().prompt_budget("cpu") == 1024
    assert Settings().prompt_budget("cuda") == 1500
    assert Settings(max_prompt_tokens=300).prompt_budget("cpu") == 300


def test_non_object_settings_are_a_warning():
    settings, warnings = parse_settings(["not", "a", "dict"])
    assert settings == Settings()
    assert warnings and "object" in warnings[0]


def test_the_cli_wait_for_a_first_conversion_is_accepted():
    # `ghostls complete` waits up to its --timeout (900 s by default) for a first-use conversion.
    settings, warnings = parse_settings({"loadWaitMs": 900_000})
    assert warnings == []
    assert settings.load_wait_ms == 900_000
