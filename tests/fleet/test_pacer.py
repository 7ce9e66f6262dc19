"""The handshake pacer (pure logic): a few connections at a time, each slot given back exactly once,
on leave or after the grace period."""

import asyncio

from fsaudit.fleet.remote import HandshakePacer


def test_pacer_lets_a_few_in_and_gives_each_slot_back_once():
    async def scenario():
        pacer = HandshakePacer(2, grace=1.0)
        first = await pacer.enter()
        await pacer.enter()  # never left: the grace period gives its slot back
        third = asyncio.ensure_future(pacer.enter())
        await asyncio.sleep(0.05)
        assert not third.done()
        first()
        first()  # a second leave gives nothing back
        leave = await asyncio.wait_for(third, 5)
        fourth = asyncio.ensure_future(pacer.enter())
        await asyncio.sleep(0.05)
        assert not fourth.done()
        await asyncio.wait_for(fourth, 5)
        leave()

    asyncio.run(scenario())
