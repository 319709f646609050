"""One enforcement rule for both hosts: the operator's threshold is a ceiling and its minimum
intensity a floor; a node (ComfyUI) or a request (A1111) can only make sanitizing stronger."""

from embedding_sanitizer.enforcement import enforced_strength, is_strong_enough
from embedding_sanitizer.hosts import a1111 as W


def test_requests_can_only_strengthen_the_operators_setting():
    assert enforced_strength(1.0, 0.5, 2.0, 0.2) == (2.0, 0.2)      # stronger: kept
    assert enforced_strength(1.0, 0.5, 0.1, 0.9) == (1.0, 0.5)      # weaker: raised to the operator's
    assert is_strong_enough(1.0, 0.5, 1.0, 0.5) and not is_strong_enough(1.0, 0.5, 1.0, 0.51)


def test_a1111_keeps_a_lower_requested_threshold_and_never_a_higher_one():
    operator = W.operator_settings({W.OPT_ENFORCE: True, W.OPT_THRESHOLD: 0.4})
    lower = W.resolve_settings({W.OPT_ENFORCE: True, W.OPT_THRESHOLD: 0.1}, True, 1.0, operator)
    higher = W.resolve_settings({W.OPT_ENFORCE: True, W.OPT_THRESHOLD: 0.9}, True, 1.0, operator)
    assert (lower.threshold, higher.threshold) == (0.1, 0.4)


def test_a1111_refuses_an_operator_threshold_that_would_erase_nothing():
    operator = W.operator_settings({W.OPT_ENFORCE: True, W.OPT_THRESHOLD: 1.0})
    assert "below 1" in W.resolve_settings({W.OPT_ENFORCE: True}, True, 1.0, operator).refusal
