"""Microsoft's Teams SDK for Python (microsoft-teams-api, -cards): its one importer in the gate.

The gate takes two things from it: the Adaptive Card elements its cards are built of, and the
invoke activity a card click is read with. It sends and receives plain JSON over its own HTTP
client (teams_connector.py), so the SDK's app, clients and auth are not used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from microsoft_teams.api.activities.invoke.adaptive_card import AdaptiveCardInvokeActivity
from microsoft_teams.api.models.adaptive_card import (
    AdaptiveCardActionCardResponse,
    AdaptiveCardActionMessageResponse,
)
from microsoft_teams.cards import core as cards
from pydantic import ValidationError

__all__ = [
    "Action",
    "CARD_TYPE",
    "Element",
    "Invoke",
    "InvokeMalformed",
    "action_execute",
    "action_open_url",
    "adaptive_card",
    "card_response",
    "column_set",
    "container",
    "message_response",
    "read_invoke",
    "text_block",
    "text_input",
    "text_run",
]

CARD_TYPE = "application/vnd.microsoft.card.adaptive"
SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
Element = cards.CardElement
Action = cards.Action
Invoke = AdaptiveCardInvokeActivity


class InvokeMalformed(ValueError):
    """An invoke activity that is not the shape Teams gives a card action."""


def text_block(
    text: str, *, weight: Literal["Bolder"] | None = None, size: Literal["Medium"] | None = None
) -> Element:
    """A TextBlock, for the gate's own words only: a TextBlock renders Markdown."""
    return cards.TextBlock(text=text, weight=weight, size=size, wrap=True)


def text_run(
    text: str,
    *,
    weight: Literal["Bolder"] | None = None,
    mono: bool = False,
    color: Literal["Attention"] | None = None,
) -> Element:
    """A RichTextBlock of one TextRun: a TextRun takes no Markdown, so its text stays text."""
    run = cards.TextRun(text=text, weight=weight, font_type="Monospace" if mono else None, color=color)
    inlines: list[cards.CardElement] = [run]
    return cards.RichTextBlock(inlines=inlines)


def column_set(columns: Sequence[tuple[str, Sequence[Element]]]) -> Element:
    """Columns of (width, items)."""
    return cards.ColumnSet(columns=[cards.Column(width=width, items=list(items)) for width, items in columns])


def container(element_id: str, items: Sequence[Element]) -> Element:
    return cards.Container(id=element_id, items=list(items))


def text_input(element_id: str, *, label: str, max_length: int) -> Element:
    return cards.TextInput(id=element_id, label=label, is_multiline=True, max_length=max_length)


def action_execute(
    title: str | None,
    verb: str,
    data: Mapping[str, Any],
    *,
    style: Literal["positive", "destructive"] | None = None,
) -> Action:
    """An Action.Execute (Universal Actions): Teams sends `verb` and `data` back in an invoke."""
    return cards.ExecuteAction(title=title, verb=verb, data=dict(data), style=style)


def action_open_url(title: str, url: str) -> Action:
    return cards.OpenUrlAction(title=title, url=url)


def adaptive_card(
    body: Sequence[Element],
    *,
    actions: Sequence[Action] = (),
    refresh: tuple[str, Mapping[str, Any], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """An Adaptive Card 1.5 as the JSON Teams takes. `refresh` is (the verb and data of its
    Action.Execute, the user ids Teams refreshes the card for on opening it)."""
    card = cards.AdaptiveCard(version="1.5", body=list(body), actions=list(actions) or None)
    if refresh is not None:
        verb, data, users = refresh
        action = cards.ExecuteAction(verb=verb, data=dict(data))
        card.refresh = cards.RefreshDefinition(action=action, user_ids=list(users))
    wire: dict[str, Any] = card.model_dump(mode="json", exclude_none=True)
    return {"type": "AdaptiveCard", "$schema": SCHEMA, **wire}


def card_response(card: Mapping[str, Any]) -> dict[str, Any]:
    """The invoke response that replaces the clicked card with `card`."""
    answer = AdaptiveCardActionCardResponse(value=cards.AdaptiveCard.model_validate(dict(card)))
    wire: dict[str, Any] = answer.model_dump(mode="json", exclude_none=True)
    return wire


def message_response(text: str) -> dict[str, Any]:
    """The invoke response that shows the clicker a short message and leaves the card as it is."""
    wire: dict[str, Any] = AdaptiveCardActionMessageResponse(value=text).model_dump(mode="json")
    return wire


def read_invoke(activity: Mapping[str, Any]) -> Invoke:
    """The activity as Teams' own model of a card action invoke; InvokeMalformed if it is not one."""
    try:
        return AdaptiveCardInvokeActivity.model_validate(dict(activity))
    except (ValidationError, TypeError, ValueError) as exc:
        raise InvokeMalformed("the card action is malformed") from exc
