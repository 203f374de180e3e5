"""detect-secrets' regex detectors as data, and its entropy measure, so scrubbing needs no import of it.

Importing detect-secrets imports `requests` and compiles every plugin's patterns, which costs more
than the rest of an approver command's start-up. `PATTERNS` holds the patterns of its regex plugins
(every `RegexBasedDetector` but public IP addresses) as they are in `DETECT_SECRETS`, the version
this list was read from; with another version installed, `detector_patterns` reads them from it
instead. tests/test_redaction.py checks this list against the installed detect-secrets.

    python -m mcp_gate.secret_patterns    # print the list the installed detect-secrets has
"""

from __future__ import annotations

import math
import re
import string
from functools import lru_cache

__all__ = [
    "BASE64_CHARSET",
    "DETECT_SECRETS",
    "HEX_CHARSET",
    "PATTERNS",
    "detector_patterns",
    "entropy",
    "read_patterns",
]

DETECT_SECRETS = "1.5.0"
# (pattern, flags of the compiled pattern), in detect-secrets' plugin order.
PATTERNS: tuple[tuple[str, int], ...] = (
    # ArtifactoryDetector
    ('(?:\\s|=|:|"|^)AKC[a-zA-Z0-9]{10,}(?:\\s|"|$)', 32),
    ('(?:\\s|=|:|"|^)AP[\\dABCDEF][a-zA-Z0-9]{8,}(?:\\s|"|$)', 32),
    # AWSKeyDetector
    ("(?:A3T[A-Z0-9]|ABIA|ACCA|AKIA|ASIA)[0-9A-Z]{16}", 32),
    ("aws.{0,20}?(?:key|pwd|pw|password|pass|token).{0,20}?[\\'\\\"]([0-9a-zA-Z/+]{40})[\\'\\\"]", 34),
    # AzureStorageKeyDetector
    ("AccountKey=[a-zA-Z0-9+\\/=]{88}", 32),
    # BasicAuthDetector
    ("://[^:/\\?\\#\\[\\]@!\\$\\&'\\(\\)\\*\\+,;=\\s]+:([^:/\\?\\#\\[\\]@!\\$\\&'\\(\\)\\*\\+,;=\\s]+)@", 32),
    # CloudantDetector
    (
        "(?:(?<=\\W)|(?<=^))(?:\\[|)(?:\"|\\'|)(?:cloudant|cl|clou)(?:_|-|)(?:api|)(?:key|pwd|pw|password|pass|token)(?:\"|\\'|)(?:\\]|)(?: *)(?:=|:|:=|=>| +|::)(?: *)(?:\"|\\'|)([0-9a-f]{64})(?:\"|\\'|)",
        34,
    ),
    (
        "(?:(?<=\\W)|(?<=^))(?:\\[|)(?:\"|\\'|)(?:cloudant|cl|clou)(?:_|-|)(?:api|)(?:key|pwd|pw|password|pass|token)(?:\"|\\'|)(?:\\]|)(?: *)(?:=|:|:=|=>| +|::)(?: *)(?:\"|\\'|)([a-z]{24})(?:\"|\\'|)",
        34,
    ),
    ("(?:https?\\:\\/\\/)[\\w\\-]+\\:([0-9a-f]{64})\\@[\\w\\-]+\\.cloudant\\.com", 34),
    ("(?:https?\\:\\/\\/)[\\w\\-]+\\:([a-z]{24})\\@[\\w\\-]+\\.cloudant\\.com", 34),
    # DiscordBotTokenDetector
    ("[MNO][a-zA-Z\\d_-]{23,25}\\.[a-zA-Z\\d_-]{6}\\.[a-zA-Z\\d_-]{27}", 32),
    # GitHubTokenDetector
    ("(ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9_]{36}", 32),
    # GitLabTokenDetector
    ("(glpat|gldt|glft|glsoat|glrt)-[A-Za-z0-9_\\-]{20,50}(?!\\w)", 32),
    ("GR1348941[A-Za-z0-9_\\-]{20,50}(?!\\w)", 32),
    ("glcbt-([0-9a-fA-F]{2}_)?[A-Za-z0-9_\\-]{20,50}(?!\\w)", 32),
    ("glimt-[A-Za-z0-9_\\-]{25}(?!\\w)", 32),
    ("glptt-[A-Za-z0-9_\\-]{40}(?!\\w)", 32),
    ("glagent-[A-Za-z0-9_\\-]{50,1024}(?!\\w)", 32),
    ("gloas-[A-Za-z0-9_\\-]{64}(?!\\w)", 32),
    # IbmCloudIamDetector
    (
        "(?:(?<=\\W)|(?<=^))(?:\\[|)(?:\"|\\'|)(?:ibm(?:_|-|)cloud(?:_|-|)iam|cloud(?:_|-|)iam|ibm(?:_|-|)cloud|ibm(?:_|-|)iam|ibm|iam|cloud|)(?:_|-|)(?:api|)(?:_|-|)(?:key|pwd|password|pass|token)(?:\"|\\'|)(?:\\]|)(?: *)(?:=|:|:=|=>| +|::)(?: *)(?:\"|\\'|)([a-zA-Z0-9_\\-]{44}(?![a-zA-Z0-9_\\-]))(?:\"|\\'|)",
        34,
    ),
    # IbmCosHmacDetector
    (
        "(?:(?<=\\W)|(?<=^))(?:\\[|)(?:\"|\\'|)(?:(?:ibm)?[-_]?cos[-_]?(?:hmac)?|)(?:_|-|)(?:secret[-_]?(?:access)?[-_]?key)(?:\"|\\'|)(?:\\]|)(?: *)(?:=|:|:=|=>| +|::)(?: *)(?:\"|\\'|)([a-f0-9]{48}(?![a-f0-9]))(?:\"|\\'|)",
        34,
    ),
    # JwtTokenDetector
    ("eyJ[A-Za-z0-9-_=]+\\.[A-Za-z0-9-_=]+\\.?[A-Za-z0-9-_.+/=]*?", 32),
    # MailchimpDetector
    ("[0-9a-z]{32}-us[0-9]{1,2}", 32),
    # NpmDetector
    ("\\/\\/.+\\/:_authToken=\\s*((npm_.+)|([A-Fa-f0-9-]{36})).*", 32),
    # OpenAIDetector
    ("sk-[A-Za-z0-9-_]*[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}", 32),
    # PrivateKeyDetector
    ("BEGIN DSA PRIVATE KEY", 32),
    ("BEGIN EC PRIVATE KEY", 32),
    ("BEGIN OPENSSH PRIVATE KEY", 32),
    ("BEGIN PGP PRIVATE KEY BLOCK", 32),
    ("BEGIN PRIVATE KEY", 32),
    ("BEGIN RSA PRIVATE KEY", 32),
    ("BEGIN SSH2 ENCRYPTED PRIVATE KEY", 32),
    ("PuTTY-User-Key-File-2", 32),
    # PypiTokenDetector
    ("pypi-AgEIcHlwaS5vcmc[A-Za-z0-9-_]{70,}", 32),
    ("pypi-AgENdGVzdC5weXBpLm9yZw[A-Za-z0-9-_]{70,}", 32),
    # SendGridDetector
    ("SG\\.[a-zA-Z0-9_-]{22}\\.[a-zA-Z0-9_-]{43}", 32),
    # SlackDetector
    ("xox(?:a|b|p|o|s|r)-(?:\\d+-)+[a-z0-9]+", 34),
    ("https://hooks\\.slack\\.com/services/T[a-zA-Z0-9_]+/B[a-zA-Z0-9_]+/[a-zA-Z0-9_]+", 98),
    # SoftlayerDetector
    (
        "(?:(?<=\\W)|(?<=^))(?:\\[|)(?:\"|\\'|)(?:softlayer|sl)(?:_|-|)(?:api|)(?:_|-|)(?:key|pwd|password|pass|token)(?:\"|\\'|)(?:\\]|)(?: *)(?:=|:|:=|=>| +|::)(?: *)(?:\"|\\'|)([a-z0-9]{64})(?:\"|\\'|)",
        34,
    ),
    ("(?:http|https)://api.softlayer.com/soap/(?:v3|v3.1)/([a-z0-9]{64})", 34),
    # SquareOAuthDetector
    ("sq0csp-[0-9A-Za-z\\\\\\-_]{43}", 32),
    # StripeDetector
    ("(?:r|s)k_live_[0-9a-zA-Z]{24}", 32),
    # TelegramBotTokenDetector
    ("\\d{8,10}:[0-9A-Za-z_-]{35}", 32),
    # TwilioKeyDetector
    ("AC[a-z0-9]{32}", 32),
    ("SK[a-z0-9]{32}", 32),
)
# The alphabets of detect-secrets' Base64HighEntropyString and HexHighEntropyString.
BASE64_CHARSET = string.ascii_letters + string.digits + "+/" + "\\-_" + "="
HEX_CHARSET = string.hexdigits


@lru_cache(maxsize=1)
def detector_patterns() -> tuple[tuple[str, int], ...]:
    """The detectors' patterns: this list, or the installed detect-secrets' own if it is another version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("detect-secrets")
    except PackageNotFoundError:
        installed = None
    return PATTERNS if installed == DETECT_SECRETS else read_patterns()


def read_patterns() -> tuple[tuple[str, int], ...]:
    """The patterns of the installed detect-secrets' regex plugins, except public IP addresses."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.ip_public import IPPublicDetector

    found: list[tuple[str, int]] = []
    plugin: type[object]
    for plugin in get_mapping_from_secret_type_to_class().values():
        if issubclass(plugin, RegexBasedDetector) and plugin is not IPPublicDetector:
            # `denylist` is a class attribute in every plugin (typed as a property on the base).
            patterns: tuple[re.Pattern[str], ...] = getattr(plugin, "denylist")  # noqa: B009
            found.extend((p.pattern, p.flags) for p in patterns)
    return tuple(found)


def entropy(data: str, charset: str) -> float:
    """detect-secrets' Shannon entropy of `data` over `charset` (bits per character), computed as it
    does; over the hex alphabet a string of digits alone counts less, as in its HexHighEntropyString."""
    if not data:
        return 0.0
    result = 0.0
    for x in charset:
        p_x = float(data.count(x)) / len(data)
        if p_x > 0:
            result += -p_x * math.log(p_x, 2)
    if charset == HEX_CHARSET and len(data) > 1:
        try:
            int(data)
        except ValueError:
            pass
        else:
            result -= 1.2 / math.log(len(data), 2)
    return result


if __name__ == "__main__":
    for pattern, flags in read_patterns():
        print(f"    ({pattern!r}, {flags}),")
