"""The session page shows, on each LLM request card, the prompt that was sent
(collapsed, escaped): what the kernel journals in `llm.request`."""

from __future__ import annotations

import re

from nexus.runtime.providers import ScriptedProvider
from tests.server.test_dashboard import Browser, signed_in, text_of, web  # noqa: F401


async def test_the_llm_request_card_shows_the_prompt_that_was_sent(signed_in: Browser) -> None:  # noqa: F811
    rt = signed_in.rt
    rt._provider = ScriptedProvider([{"content": "done"}])
    sid = rt.create_session("summarise <notes>")
    await rt.run(sid)
    page = (await signed_in.client.get(f"/sessions/{sid}")).text
    card = re.search(
        r'<li class="ev ev-llm ev-request"[^>]*data-kind="llm.request".*?</li>\s*</ol>', page, re.S
    )
    assert card is not None
    visible = text_of(card.group(0))
    assert "LLM request" in visible and "step 1" in visible and "max 4,096 tok" in visible
    assert "Prompt sent: 2 new messages" in visible
    assert "user summarise <notes>" in visible  # shown as text
    assert "summarise &lt;notes&gt;" in card.group(0)  # escaped in the HTML
    assert '<details class="prompt">' in card.group(0)  # collapsed
