"""`python -m bench.k6run --help` says what every option does."""

from __future__ import annotations

from bench import k6run


def test_every_k6run_option_has_a_help_text_and_shows_its_default():
    parser = k6run.build_parser()
    options = [action for action in parser._actions if action.option_strings]
    assert {o.dest for o in options} >= {"http", "target", "token", "events", "vus", "dup_rate"}
    for option in options:
        assert option.help and len(option.help) > 20, option.option_strings
        if option.default not in (None, "==SUPPRESS=="):
            assert "%(default)s" in option.help, option.option_strings
    assert "Exit 0" in parser.format_help()
