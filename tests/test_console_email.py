"""Email approvals against a real SMTP server: mails to eligible approvers, links confirmed once."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcp_gate import runtime
from mcp_gate.channels.email import EmailChannel
from mcp_gate.config import load_config
from mcp_gate.errors import ConfigError
from mcp_gate.testing import eventually
from tests.console_helpers import Browserless, Gate, gate_with_console, make_config, text_of
from tests.email_helpers import Inbox, smtp_server

pytestmark = pytest.mark.anyio

PUBLIC = "http://console.example.invalid/console"


def email_config(tmp_path: Path, port: int) -> Path:
    config = make_config(tmp_path, console=f'public_url = "{PUBLIC}"')
    with config.open("a") as f:
        f.write(
            f'\n[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\nstarttls = false\n'
            'from = "gate@example.com"\nnotify = ["audit@example.com"]\n'
        )
    return config


def local(gate: Gate, url: str) -> str:
    """A link as mailed (under [console] public_url), as this test reaches the console."""
    assert url.startswith(PUBLIC)
    return url.removeprefix(PUBLIC.removesuffix("/console"))


async def mailer(gate: Gate, tg: anyio.abc.TaskGroup) -> None:
    config = gate.front.gateway.config
    assert config.email is not None
    await tg.start(EmailChannel(gate.front.gateway, config.email, None, runtime.console_key(config)).run)


async def test_a_request_is_mailed_to_its_eligible_approvers_and_a_link_decides_once_after_confirming(
    tmp_path: Path,
) -> None:
    async with smtp_server() as inbox:
        config = email_config(tmp_path, inbox.port)
        async with gate_with_console(config) as gate, Browserless(gate.base) as bob:
            await mailer(gate, gate.tg)
            held = await gate.hold("notes__write_note", {"name": "todo", "text": "<b>x</b>"})
            await eventually(lambda: len(inbox.mails) >= 3, what="three mails")
            # bob (sre) and carol (security) may decide; alice is the owner, frank is in neither group.
            assert sorted(m["To"] for m in inbox.mails) == [
                "audit@example.com",
                "bob@example.com",
                "carol@example.com",
            ]
            assert Inbox.links(inbox.to("audit@example.com")) == {}  # notify-only: no links
            links = Inbox.links(inbox.to("bob@example.com"))
            approve = local(gate, links["approve"])
            await bob.login("tok-bob")
            page = await bob.get(approve)
            assert page.status_code == 200 and f"Approve {held.request.id}" in page.text
            assert (
                await gate.front.gateway.engine.get(held.request.id)
            ).state == "pending"  # a link alone: no
            confirmed = await bob.post(approve, {})
            assert confirmed.status_code == 303
            await held.outcome()
            again = await bob.get(approve)
            assert "already used" in again.text
            twice = await bob.post(approve, {})
            assert twice.status_code == 409
            carols = local(gate, Inbox.links(inbox.to("carol@example.com"))["approve"])
            assert (await bob.get(carols)).status_code == 403  # sent to carol, not bob
    records = await gate.evidence()
    assert [r["approver"] for r in records if r["event_type"] == "approval.decided"] == ["bob"]
    assert len([r for r in records if r["event_type"] == "email.link_used"]) == 1
    (sent,) = [r for r in records if r["event_type"] == "email.sent"]
    assert sorted(sent["to"]) == ["bob", "carol"] and sent["notified"] == ["audit@example.com"]


async def test_a_deny_link_needs_a_reason_and_a_tampered_link_is_refused(tmp_path: Path) -> None:
    async with (
        smtp_server() as inbox,
        gate_with_console(email_config(tmp_path, inbox.port)) as gate,
        Browserless(gate.base) as carol,
    ):
        await mailer(gate, gate.tg)
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
        await eventually(lambda: len(inbox.mails) >= 3, what="three mails")
        deny = local(gate, Inbox.links(inbox.to("carol@example.com"))["deny"])
        await carol.login("tok-carol")
        body, _, signature = deny.rpartition(".")
        forged = await carol.get(f"{body}.{'0' * len(signature)}")
        assert forged.status_code == 400
        assert (await carol.post(deny, {"reason": " "})).status_code == 400
        assert (await carol.post(deny, {"reason": "not now"})).status_code == 303
        result = await held.outcome()
    assert result.is_error and "not now" in text_of(result)


async def test_a_failed_delivery_is_recorded_and_retried(tmp_path: Path) -> None:
    async with smtp_server() as inbox:
        port = inbox.port
    config = email_config(tmp_path, port)  # nothing listens there any more
    async with gate_with_console(config) as gate:
        gateway = gate.front.gateway
        assert gateway.config.email is not None
        channel = EmailChannel(gateway, gateway.config.email, None, runtime.console_key(gateway.config))
        await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
        assert await channel.send_due() == 0
    assert [r["event_type"] for r in await gate.evidence() if r["event_type"].startswith("email.")] == [
        "email.send_failed"
    ]


def test_email_needs_the_consoles_public_url(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with config.open("a") as f:
        f.write('\n[email]\nsmtp_host = "127.0.0.1"\nfrom = "gate@example.com"\n')
    with pytest.raises(ConfigError, match="public_url"):
        load_config(config, {})


async def test_an_approver_who_is_away_is_not_mailed_and_break_glass_mails_every_approver_of_the_tier(
    tmp_path: Path,
) -> None:
    from mcp_gate.availability import mark_away

    async with smtp_server() as inbox:
        config = email_config(tmp_path, inbox.port)
        with config.open("a") as f:
            f.write('\n[breakglass]\ngroups = ["security"]\n')
        async with gate_with_console(config) as gate, Browserless(gate.base) as carol:
            engine = gate.front.gateway.engine
            bob = gate.front.gateway.config.approvers["bob"]
            await mark_away(engine, bob, until=None, note="on leave", channel="test")
            await mailer(gate, gate.tg)
            held = await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
            await eventually(lambda: len(inbox.mails) >= 2, what="the request's mails")
            first = sorted(m["To"] for m in inbox.mails)
            await carol.login("tok-carol")
            page = f"/console/requests/{held.request.id}"
            await carol.get(page)
            assert (await carol.post(f"{page}/breakglass", {"reason": "prod is down"})).status_code == 303
            await held.outcome()

            async def told() -> bool:
                return any(r["event_type"] == "email.breakglass_notified" for r in await gate.evidence())

            await eventually(told, what="the break-glass mails, recorded")
            notices = sorted(m["To"] for m in inbox.mails if str(m["Subject"]).startswith("Break-glass"))
    assert first == ["audit@example.com", "carol@example.com"]  # bob is away: not mailed
    records = await gate.evidence()
    (sent,) = [r for r in records if r["event_type"] == "email.sent"]
    assert sent["to"] == ["carol"] and sent["away"] == ["bob"]
    # Break-glass is an alarm: every approver of the tier, bob too (away), carol (who broke it) too.
    (told,) = [r for r in records if r["event_type"] == "email.breakglass_notified"]
    assert notices == sorted(f"{n}@example.com" for n in told["to"]) and "bob" in told["to"]


def tls_config(tmp_path: Path, port: int, *, ca: bool) -> Path:
    """[email] for the relay: STARTTLS, a user, its password in a 0600 file, the relay's CA or not."""
    config = make_config(tmp_path, console=f'public_url = "{PUBLIC}"')
    secret = tmp_path / "smtp-password"
    secret.write_text("relay-pass-9f2c\n")
    secret.chmod(0o600)
    with config.open("a") as f:
        f.write(
            f'\n[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\nfrom = "gate@example.com"\n'
            f'username = "gate"\npassword_file = "{secret}"\n'
            + ('ca_file = "../relay-ca.pem"\n' if ca else "")
        )
    return config


async def start_mailer(gate: Gate) -> None:
    config = gate.front.gateway.config
    assert config.email is not None and config.email.password is not None
    password = config.email.password.read({}, str(config.path))
    await gate.tg.start(
        EmailChannel(gate.front.gateway, config.email, password, runtime.console_key(config)).run
    )


async def test_mail_goes_over_starttls_to_a_relay_whose_certificate_is_verified_and_then_logs_in(
    tmp_path: Path,
) -> None:
    from tests.email_helpers import relay

    server = relay({"gate": "relay-pass-9f2c"}, directory=tmp_path)
    (tmp_path / "relay-ca.pem").write_text(server.ca_pem)
    async with smtp_server(server) as inbox:
        config = tls_config(tmp_path, inbox.port, ca=True)
        async with gate_with_console(config) as gate:
            await start_mailer(gate)
            await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
            await eventually(lambda: inbox.mails, what="a mail through the relay")
            records = await gate.evidence()
    assert server.logins == [("gate", True)]
    assert inbox.to("bob@example.com") and "relay-pass-9f2c" not in str(records)


async def test_a_relay_whose_certificate_does_not_verify_gets_no_password_and_the_failure_is_recorded(
    tmp_path: Path,
) -> None:
    from tests.email_helpers import relay

    server = relay({"gate": "relay-pass-9f2c"}, directory=tmp_path)
    async with smtp_server(server) as inbox:
        config = tls_config(tmp_path, inbox.port, ca=False)  # the system's CAs: not the relay's
        async with gate_with_console(config) as gate:
            await start_mailer(gate)
            await gate.hold("notes__write_note", {"name": "todo", "text": "x"})

            async def failed() -> list[dict[str, object]]:
                return [r for r in await gate.evidence() if r["event_type"] == "email.send_failed"]

            (failure,) = (await eventually(failed, what="the failed send, recorded"))[:1]
    assert "certificate verify failed" in str(failure["why"])
    assert server.logins == [] and inbox.mails == []


def test_an_smtp_password_is_never_sent_in_clear_off_loopback_and_a_ca_file_must_hold_a_certificate(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, console=f'public_url = "{PUBLIC}"')
    base = config.read_text()
    for tail, key in [
        (
            'smtp_host = "mail.example.com"\nstarttls = false\nusername = "u"\npassword_env = "P"\n',
            "starttls",
        ),
        ('smtp_host = "mail.example.com"\nca_file = "gate.toml"\n', "email.ca_file"),
        ('smtp_host = "mail.example.com"\nca_file = "missing.pem"\n', "email.ca_file"),
    ]:
        config.write_text(base + f'\n[email]\nfrom = "gate@example.com"\n{tail}')
        with pytest.raises(ConfigError, match=key):
            load_config(config, {})
    config.write_text(base + '\n[email]\nfrom = "g@example.com"\nsmtp_host = "127.0.0.1"\nstarttls = false\n')
    assert load_config(config, {}).email is not None  # loopback, no password: a local relay
