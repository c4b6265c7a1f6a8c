"""Settings of the context and post-processing work: valid values apply, invalid ones fall back with a warning."""

from __future__ import annotations

from ghostls.completion.settings import Settings, parse_settings


def test_context_settings_apply():
    settings, warnings = parse_settings({"workspaceContext": False, "contextTokens": 512,
                                         "secretPatterns": ["*.sqlite"], "skipRules": ["syntax", "block"]})
    assert warnings == []
    assert settings == Settings(workspace_context=False, context_tokens=512, secret_patterns=("*.sqlite",),
                                skip_rules=("syntax", "block"))


def test_invalid_context_settings_fall_back():
    settings, warnings = parse_settings({"secretPatterns": "*.pem", "skipRules": ["everything"],
                                         "contextTokens": -1})
    assert settings == Settings()
    assert len(warnings) == 3
    assert any("skipRules" in w and "next_line, block, suffix, indent, repetition, syntax" in w for w in warnings)
