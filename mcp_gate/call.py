"""One call's context from admission to outcome: requester, tool, arguments, decision, record fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp_gate.approvals import Binding
from mcp_gate.config import Requester
from mcp_gate.offering import OfferedTool
from mcp_gate.policy import Decision, split_name

__all__ = ["CallContext", "arrival_fields"]


def arrival_fields(requester: Requester, transport: str, name: str) -> dict[str, Any]:
    """What every record of a call carries, as known on arrival: the tool as the agent named it
    (a name that names no server is recorded whole, as the tool)."""
    split = split_name(name)
    return {
        "requester": requester.recorded(),
        "transport": transport,
        "server": split[0] if split else None,
        "tool": split[1] if split else name,
    }


@dataclass(frozen=True)
class CallContext:
    """An admitted call as it goes through decide and route: its tool and arguments, the policy's
    decision, and the correlation id its records share. Later steps derive a changed copy
    (`dataclasses.replace`): a retry continuing an earlier call takes that call's correlation id,
    and a held call takes the id of the approval request it waited for."""

    correlation_id: str
    requester: Requester
    transport: str
    offered: OfferedTool
    args: dict[str, Any]
    args_sha256: str
    decision: Decision
    policy_sha256: str
    request_id: str | None = None

    @property
    def name(self) -> str:
        return self.offered.name

    @property
    def binding(self) -> Binding:
        """The exact call an approval, a grant or a sealed request_state is good for."""
        return Binding(
            agent=self.requester.agent,
            owner=self.requester.owner,
            server=self.offered.server,
            tool=self.offered.tool,
            pin=self.offered.pin,
            args_sha256=self.args_sha256,
            policy_sha256=self.policy_sha256,
        )

    def fields(self) -> dict[str, Any]:
        """What every record of this call carries, in the order the records have always had it."""
        return arrival_fields(self.requester, self.transport, self.name) | {
            "pin": self.offered.pin,
            "args_sha256": self.args_sha256,
        }

    def linked(self) -> dict[str, Any]:
        """`fields()`, and the approval request the call was held for: its outcome records name
        the request, so `audit show` finds the decisions."""
        fields = self.fields()
        if self.request_id:
            fields["request_id"] = self.request_id
        return fields

    def inflight(self) -> dict[str, Any]:
        """What the in-flight marker keeps, for recording the outcome of a call cut off mid-run."""
        return {
            "requester": {"agent": self.requester.agent, "owner": self.requester.owner},
            "server": self.offered.server,
            "tool": self.offered.tool,
            "pin": self.offered.pin,
            "args_sha256": self.args_sha256,
        }
