"""The junk decision: SpamAssassin headers, trusted authentication results, rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from quarantine import config, verdict


def deliver_config(tmp_path: Path, yaml_text: str = "") -> config.DeliverConfig:
    path = tmp_path / "q.yaml"
    path.write_text("deliver:\n  authserv_ids: [mx.example.test]\n" + yaml_text)
    return config.load_file(str(path), write_cache=False).deliver


def decide(headers: list[tuple[str, str]], cfg: config.DeliverConfig) -> verdict.Decision:
    return verdict.decide([(n.lower(), v) for n, v in headers], cfg)


SPAM = ("X-Spam-Status", "Yes, score=12.3 required=5.0 tests=GTUBE autolearn=no version=4.0.0")
HAM = ("X-Spam-Status", "No, score=-1.9 required=5.0 tests=BAYES_00 autolearn=ham")


def test_spamassassin_yes_is_junk(tmp_path: Path) -> None:
    decision = decide([SPAM], deliver_config(tmp_path))
    assert (decision.action, decision.rule) == ("junk", "spamassassin")
    assert decision.facts.score == 12.3
    assert "score=12.3" in decision.reason


def test_spamassassin_no_is_inbox(tmp_path: Path) -> None:
    decision = decide([HAM], deliver_config(tmp_path))
    assert (decision.action, decision.rule) == ("inbox", None)


def test_spam_flag_alone_is_junk(tmp_path: Path) -> None:
    assert decide([("X-Spam-Flag", " YES")], deliver_config(tmp_path)).action == "junk"


def test_no_spamassassin_headers_is_inbox(tmp_path: Path) -> None:
    assert decide([("Subject", "hello")], deliver_config(tmp_path)).action == "inbox"


def test_forged_no_above_real_yes_is_still_junk(tmp_path: Path) -> None:
    """A sender can add its own X-Spam-Status: any Yes counts, the top score wins."""
    headers = [("X-Spam-Status", "No, score=0.0"), SPAM]
    decision = decide(headers, deliver_config(tmp_path))
    assert decision.action == "junk"
    assert decision.facts.score == 12.3


def test_dmarc_fail_with_reject_policy_is_junk(tmp_path: Path) -> None:
    ar = ("Authentication-Results", "mx.example.test; dmarc=fail (p=reject dis=none) "
          "header.from=bank.example")  # fmt: skip
    decision = decide([ar, HAM], deliver_config(tmp_path))
    assert (decision.action, decision.rule) == ("junk", "dmarc-reject")
    assert decision.facts.dmarc_policy == "reject"


def test_dmarc_policy_from_property(tmp_path: Path) -> None:
    ar = ("Authentication-Results", "mx.example.test; dmarc=fail policy.dmarc=reject header.from=x")
    assert decide([ar], deliver_config(tmp_path)).rule == "dmarc-reject"


def test_dmarc_fail_with_none_policy_stays(tmp_path: Path) -> None:
    ar = ("Authentication-Results", "mx.example.test; dmarc=fail (p=none) header.from=x.example")
    assert decide([ar, HAM], deliver_config(tmp_path)).action == "inbox"


def test_foreign_authserv_id_is_ignored(tmp_path: Path) -> None:
    ar = ("Authentication-Results", "evil.example; dmarc=fail (p=reject) header.from=bank.example")
    decision = decide([ar, HAM], deliver_config(tmp_path))
    assert decision.action == "inbox"
    assert decision.facts.dmarc is None


def test_authserv_id_with_version_and_case(tmp_path: Path) -> None:
    ar = ("Authentication-Results", "MX.Example.Test 1; spf=fail smtp.mailfrom=x.example")
    decision = decide([ar, ("X-Spam-Status", "No, score=3.1")], deliver_config(tmp_path))
    assert (decision.action, decision.rule) == ("junk", "spf-fail")


def test_spf_fail_below_score_threshold_stays(tmp_path: Path) -> None:
    ar = ("Authentication-Results", "mx.example.test; spf=fail smtp.mailfrom=x.example")
    assert decide([ar, ("X-Spam-Status", "No, score=1.0")], deliver_config(tmp_path)).action == (
        "inbox"
    )


def test_trusted_dkim_keeps_flagged_mail_in_inbox(tmp_path: Path) -> None:
    cfg = deliver_config(tmp_path, "  trusted_domains: [bank.example]\n")
    ar = ("Authentication-Results", "mx.example.test; dkim=pass header.d=mail.bank.example "
          "header.s=s1; spf=pass smtp.mailfrom=bank.example")  # fmt: skip
    decision = decide([ar, SPAM], cfg)
    assert (decision.action, decision.rule) == ("inbox", "trusted-dkim")


def test_untrusted_dkim_domain_does_not_rescue(tmp_path: Path) -> None:
    cfg = deliver_config(tmp_path, "  trusted_domains: [bank.example]\n")
    ar = ("Authentication-Results", "mx.example.test; dkim=pass header.d=evilbank.example")
    assert decide([ar, SPAM], cfg).action == "junk"


def test_trusted_dkim_from_foreign_authserv_does_not_rescue(tmp_path: Path) -> None:
    cfg = deliver_config(tmp_path, "  trusted_domains: [bank.example]\n")
    ar = ("Authentication-Results", "evil.example; dkim=pass header.d=bank.example")
    assert decide([ar, SPAM], cfg).action == "junk"


def test_received_spf_topmost_from_our_host(tmp_path: Path) -> None:
    spf = (
        "Received-SPF",
        "fail (mx.example.test: domain of x@y.example does not designate "
        "192.0.2.1 as permitted sender) client-ip=192.0.2.1; envelope-from=x@y.example;",
    )
    decision = decide([spf, ("X-Spam-Status", "No, score=2.5")], deliver_config(tmp_path))
    assert decision.facts.spf == "fail"
    assert decision.rule == "spf-fail"


def test_received_spf_below_the_top_is_ignored(tmp_path: Path) -> None:
    ours = ("Received-SPF", "pass (mx.example.test: domain of x designates ip) client-ip=1.2.3.4")
    forged = ("Received-SPF", "fail (mx.example.test: forged) client-ip=1.2.3.4")
    decision = decide([ours, forged, ("X-Spam-Status", "No, score=3")], deliver_config(tmp_path))
    assert decision.facts.spf == "pass"
    assert decision.action == "inbox"


def test_received_spf_pyspf_receiver_key(tmp_path: Path) -> None:
    spf = ("Received-SPF", 'Fail (mailfrom) identity=mailfrom; client-ip=1.2.3.4; '
           'envelope-from="a@b.example"; receiver=mx.example.test;')  # fmt: skip
    assert verdict.received_spf(spf[1]) == ("fail", "mx.example.test")


def test_received_spf_can_be_distrusted(tmp_path: Path) -> None:
    cfg = deliver_config(tmp_path, "  trust_received_spf: false\n")
    spf = ("Received-SPF", "fail (mx.example.test: no) client-ip=1.2.3.4")
    assert decide([spf, ("X-Spam-Status", "No, score=9")], cfg).facts.spf is None


def test_custom_rules_in_order(tmp_path: Path) -> None:
    cfg = deliver_config(
        tmp_path,
        "  rules:\n"
        "    - {name: nuke, score_at_least: 20, action: bounce}\n"
        "    - {name: high, score_at_least: 8, action: junk}\n",
    )
    assert decide([("X-Spam-Status", "No, score=9.0")], cfg).rule == "high"
    assert decide([("X-Spam-Status", "Yes, score=25")], cfg).action == "bounce"
    # With custom rules the defaults are replaced: a plain Yes at 6 matches nothing.
    assert decide([("X-Spam-Status", "Yes, score=6")], cfg).action == "inbox"


@pytest.mark.parametrize(
    "value",
    ["", ";;;", "(unclosed; dkim=pass", 'mx.example.test; dkim="pass', "\x00\xff; x=y", "a" * 5000],
)
def test_garbage_auth_results_do_not_crash(tmp_path: Path, value: str) -> None:
    decision = decide([("Authentication-Results", value), HAM], deliver_config(tmp_path))
    assert decision.action == "inbox"


@pytest.mark.parametrize("score", ["nan", "inf", "1e400", "-", "12,3", ""])
def test_odd_scores_are_ignored(tmp_path: Path, score: str) -> None:
    decision = decide(
        [("X-Spam-Status", f"No, score={score} required=5.0")], deliver_config(tmp_path)
    )
    assert decision.facts.score is None


def test_comment_and_quoted_semicolons(tmp_path: Path) -> None:
    parsed = verdict.auth_results(
        "mx.example.test (our; host); dkim=pass (good; sig) header.d=a.example "
        'header.b="ab;cd"; spf=pass smtp.mailfrom=a.example'
    )
    assert parsed is not None
    authserv, results = parsed
    assert authserv == "mx.example.test"
    assert [(m, r) for m, r, _, _ in results] == [("dkim", "pass"), ("spf", "pass")]
    assert results[0][2]["header.d"] == "a.example"


@pytest.mark.parametrize(
    ("value", "spam"),
    [
        ("Yes, score=7", True),
        ("Yes score=7", True),
        (" yes", True),
        ("Yes;", False),
        ("Y es", False),
    ],
)
def test_spam_status_first_word(value: str, spam: bool) -> None:
    assert verdict.spam_status(value)[0] is spam
