"""The junk decision, as a pure function: parsed headers and the configuration
in, an action and its reason out. No I/O, no clock, no imports beyond the stdlib
core, so it is fast on the mail path and trivially testable.

Only what our own servers wrote is believed: `Authentication-Results:` whose
authserv-id is one of ours, and the topmost `Received-SPF:` naming one of our
hosts as the receiver. Everything else in a header is the sender's word.
"""

# quarantine-queue's comment on a DKIM pass whose signature has l= (dkimverify).
PARTIAL = "partial body"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from quarantine.configschema import DeliverConfig, Rule


class Facts:
    """What the headers say, once the untrusted parts are dropped."""

    __slots__ = ("dkim", "dmarc", "dmarc_policy", "from_domain", "score", "spam", "spf")

    def __init__(self) -> None:
        self.spam = False  # SpamAssassin said Yes
        self.score: float | None = None  # the highest X-Spam-Status score
        self.spf: str | None = None
        self.dkim: list[tuple[str, str]] = []  # (result, signing domain)
        self.dmarc: str | None = None
        self.dmarc_policy: str | None = None
        self.from_domain: str | None = None

    def summary(self) -> str:
        parts = [f"spam={'yes' if self.spam else 'no'}"]
        if self.score is not None:
            parts.append(f"score={self.score:g}")
        if self.spf:
            parts.append(f"spf={self.spf}")
        for result, domain in self.dkim:
            parts.append(f"dkim={result}" + (f"({domain})" if domain else ""))
        if self.dmarc:
            policy = f"(p={self.dmarc_policy})" if self.dmarc_policy else ""
            parts.append(f"dmarc={self.dmarc}{policy}")
        return " ".join(parts)


class Decision:
    """The outcome: `action` is junk, inbox or bounce; `rule` the rule that
    matched (None: no rule matched, the default is inbox)."""

    __slots__ = ("action", "facts", "rule")

    def __init__(self, action: str, rule: "str | None", facts: "Facts") -> None:
        self.action = action
        self.rule = rule
        self.facts = facts

    @property
    def reason(self) -> str:
        rule = self.rule or "no rule matched"
        return f"{rule}: {self.facts.summary()}"


def decide(headers: "Sequence[tuple[str, str]]", config: "DeliverConfig") -> "Decision":
    """Apply the ordered rules to what the trusted headers say."""
    facts = gather(headers, config.authserv_ids, config.trust_received_spf)
    for rule in config.rules:
        if matches(rule, facts, config.trusted_domains):
            return Decision(rule.action, rule.name, facts)
    return Decision("inbox", None, facts)


def matches(rule: "Rule", facts: "Facts", trusted_domains: "Iterable[str]") -> bool:
    """All of a rule's conditions hold (an unset condition always holds)."""
    if rule.spam is not None and facts.spam != rule.spam:
        return False
    if rule.score_at_least is not None and (
        facts.score is None or facts.score < rule.score_at_least
    ):
        return False
    if rule.score_below is not None and (facts.score is None or facts.score >= rule.score_below):
        return False
    if rule.spf is not None and facts.spf not in rule.spf:
        return False
    if rule.dkim is not None and not any(result in rule.dkim for result, _ in facts.dkim):
        return False
    if rule.dmarc is not None and facts.dmarc not in rule.dmarc:
        return False
    if rule.dmarc_policy is not None and facts.dmarc_policy not in rule.dmarc_policy:
        return False
    if rule.dkim_trusted is not None:
        trusted = any(
            result == "pass" and in_domains(domain, trusted_domains)
            for result, domain in facts.dkim
        )
        if trusted != rule.dkim_trusted:
            return False
    return True


def in_domains(domain: str, domains: "Iterable[str]") -> bool:
    """`domain` is one of `domains` or a subdomain of one."""
    domain = domain.lower().rstrip(".")
    for listed in domains:
        listed = listed.lower().rstrip(".")
        if domain == listed or domain.endswith("." + listed):
            return True
    return False


def gather(
    headers: "Sequence[tuple[str, str]]", authserv_ids: "Iterable[str]", trust_received_spf: bool
) -> "Facts":
    facts = Facts()
    ours = {a.lower() for a in authserv_ids}
    seen_spf_header = False
    for name, value in headers:
        if name == "x-spam-status":
            spam, score = spam_status(value)
            facts.spam = facts.spam or spam
            if score is not None and (facts.score is None or score > facts.score):
                facts.score = score
        elif name == "x-spam-flag":
            facts.spam = facts.spam or value.strip().upper() == "YES"
        elif name == "authentication-results":
            parsed = auth_results(value)
            if parsed is not None and parsed[0] in ours:
                _take_results(facts, parsed[1])
        elif name == "received-spf" and not seen_spf_header:
            seen_spf_header = True  # only the topmost one can be our MTA's
            if trust_received_spf:
                result, receiver = received_spf(value)
                if receiver in ours and facts.spf is None:
                    facts.spf = result
    return facts


def spam_status(value: str) -> "tuple[bool, float | None]":
    """`Yes, score=7.2 required=5.0 tests=...` -> (True, 7.2)."""
    words = value.split(",", 1)[0].split(None, 1)  # "Yes," and a comma-less "Yes score=5"
    word = words[0].lower() if words else ""
    score = None
    for token in value.split():
        if token[:6].lower() == "score=":
            score = _number(token[6:].rstrip(","))
            break
    return word == "yes", score


def _number(text: str) -> "float | None":
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number == number and abs(number) < 1e9 else None  # no NaN, no inf


def received_spf(value: str) -> "tuple[str, str]":
    """`pass (mx.example: domain of ...) client-ip=...; receiver=...` ->
    (result, receiver host). qmail-spf names the receiver at the start of the
    comment, pyspf in a `receiver=` key; both are taken."""
    text = value.strip()
    result = text.split(None, 1)[0].lower() if text else ""
    receiver = ""
    open_paren = text.find("(")
    if open_paren >= 0:
        comment = text[open_paren + 1 :]
        colon = comment.find(":")
        space = comment.find(" ")
        if colon > 0 and (space < 0 or colon < space):
            receiver = comment[:colon]
    for token in text.replace(";", " ").split():
        if token[:9].lower() == "receiver=":
            receiver = token[9:].strip('"')
    result = {"error": "temperror", "unknown": "permerror"}.get(result, result)
    return result, receiver.lower().rstrip(".")


def auth_results(value: str) -> "tuple[str, list[tuple[str, str, dict[str, str], str]]] | None":
    """Parse an RFC 8601 `Authentication-Results:` value into its authserv-id
    and a list of (method, result, properties, comments). None when the value
    has no authserv-id."""
    statements = _split_statements(value)
    if not statements:
        return None
    head_words = statements[0][0].split()
    if not head_words:
        return None
    authserv_id = head_words[0].lower().rstrip(".")
    results = []
    for text, comments in statements[1:]:
        words = text.split()
        if not words or "=" not in words[0]:
            continue  # "none", or junk
        method, result = words[0].split("=", 1)
        method = method.split("/", 1)[0].lower()
        properties: dict[str, str] = {}
        for word in words[1:]:
            key, sep, val = word.partition("=")
            if sep:
                properties.setdefault(key.lower(), val.strip('"'))
        results.append((method, result.lower(), properties, comments))
    return authserv_id, results


def _split_statements(value: str) -> "list[tuple[str, str]]":
    """Split on `;` outside quotes and comments; comments are lifted out of
    the text and returned beside it."""
    statements: list[tuple[str, str]] = []
    text: list[str] = []
    comments: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            (comments if depth else text).append(ch)
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            text.append(ch)
            if ch == '"':
                quoted = False
        elif ch == "(":
            depth += 1
            if depth > 1:
                comments.append(ch)
            else:
                text.append(" ")
        elif ch == ")" and depth:
            depth -= 1
            comments.append(ch if depth else " ")
        elif depth:
            comments.append(ch)
        elif ch == '"':
            quoted = True
            text.append(ch)
        elif ch == ";":
            statements.append(("".join(text), "".join(comments)))
            text, comments = [], []
        else:
            text.append(ch)
    statements.append(("".join(text), "".join(comments)))
    return statements


def _take_results(facts: "Facts", results: "list[tuple[str, str, dict[str, str], str]]") -> None:
    for method, result, props, comments in results:
        if method == "spf" and facts.spf is None:
            facts.spf = result
        elif method == "dkim":
            domain = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
            if result == "pass" and PARTIAL in comments:
                # l=: the signer vouched for part of the body only, and anyone
                # may append to it; no rule may take it for a pass.
                result = "policy"
            facts.dkim.append((result, domain.lower()))
        elif method == "dmarc" and facts.dmarc is None:
            facts.dmarc = result
            facts.from_domain = props.get("header.from", "").lower() or None
            policy = props.get("policy.dmarc") or props.get("policy.published-domain-policy")
            if not policy:
                for word in comments.replace(",", " ").split():
                    if word[:2].lower() == "p=":
                        policy = word[2:]
                        break
            facts.dmarc_policy = policy.lower() if policy else None
