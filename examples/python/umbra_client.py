#!/usr/bin/env python3
"""A small client of the Umbra daemon's WebSocket API (docs/api.md).

It shows everything another language needs: connect with the token,
read the hello, send requests with ids and match their replies, and
handle events (messages, statuses) that arrive in between.

    umbra_client.py --url ws://127.0.0.1:1978/v1/ws --token-file DIR/api-token invite alice
    umbra_client.py ... add 'umbra2:…'           # a contact's invite
    umbra_client.py ... send <contact id> 'hello' # waits until stored (or read)
    umbra_client.py ... listen --count 1          # prints messages as they arrive
    umbra_client.py ... contacts

Needs the `websockets` package (Debian: python3-websockets).
"""

import argparse
import asyncio
import itertools
import json
import sys

import websockets


class Api:
    """One connection: requests answered in order, events kept for later."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events = []

    @classmethod
    async def connect(cls, url, token):
        # The token goes in the query string; a program sends no Origin,
        # so the daemon lets it in on the token alone.
        ws = await websockets.connect(f"{url}?token={token}", max_size=2**24)
        api = cls(ws)
        hello = json.loads(await ws.recv())
        if hello.get("event") != "hello" or hello.get("api") != 1:
            raise RuntimeError(f"unexpected first frame: {hello}")
        api.me = hello["me"]
        return api

    async def call(self, op, **args):
        """Sends a request; returns its result or raises with the daemon's error."""
        rid = next(self.ids)
        await self.ws.send(json.dumps({"id": rid, "op": op, **args}))
        while True:
            frame = json.loads(await self.ws.recv())
            if frame.get("reply") == rid:
                if not frame["ok"]:
                    e = frame["error"]
                    raise RuntimeError(f"{op}: {e['code']} ({e['fault']}): {e['message']}")
                return frame["result"]
            self.events.append(frame)

    async def event(self, accept, timeout):
        """The next event `accept` takes (events read earlier count)."""
        for i, e in enumerate(self.events):
            if accept(e):
                return self.events.pop(i)
        async def wait():
            while True:
                e = json.loads(await self.ws.recv())
                if accept(e):
                    return e
        return await asyncio.wait_for(wait(), timeout)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="ws://127.0.0.1:1978/v1/ws")
    p.add_argument("--token-file", required=True, help="the daemon's api-token file")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for events")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("invite").add_argument("name")
    sub.add_parser("add").add_argument("invite")
    s = sub.add_parser("send")
    s.add_argument("contact")
    s.add_argument("text")
    sub.add_parser("listen").add_argument("--count", type=int, default=1)
    sub.add_parser("contacts")
    a = p.parse_args()

    with open(a.token_file) as f:
        token = f.read().strip()
    api = await Api.connect(a.url, token)

    if a.cmd == "invite":
        print((await api.call("invite", name=a.name))["invite"])
    elif a.cmd == "add":
        c = (await api.call("add_contact", invite=a.invite))["contact"]
        print(f"added {c['name']} ({c['id'][:12]}…), safety number {c['safety_number']}")
    elif a.cmd == "contacts":
        for c in (await api.call("contacts"))["contacts"]:
            mark = "verified" if c["verified"] else "not verified"
            print(f"{c['id']}  {c['name']}  ({mark}, {c['unread']} unread)")
    elif a.cmd == "send":
        m = (await api.call("send_text", to=a.contact, text=a.text))["message"]
        print(f"sent #{m['seq']}: {m['status']}")
        # Follow its status until the dropbox gateway holds it (or it failed).
        status = m["status"]
        while status not in ("stored", "read") and not status.startswith("failed"):
            e = await api.event(
                lambda e: e.get("event") == "status" and e["seq"] == m["seq"], a.timeout)
            status = e["status"]
            print(f"  #{m['seq']}: {status}")
        if status.startswith("failed"):
            sys.exit(f"message failed: {status}")
    elif a.cmd == "listen":
        shown = set()

        def show(m):
            shown.add(m["seq"])
            body = m["text"] if m["text"] is not None else f"[{m['kind']}]"
            print(f"from {m['from'][:12]}…: {body}", flush=True)
        # What arrived while no one listened: each conversation's unread
        # messages, from the daemon's history.
        left = a.count
        for c in (await api.call("contacts"))["contacts"]:
            if c["unread"] and left:
                conv = {"contact": c["id"]}
                page = (await api.call("history", conversation=conv, limit=c["unread"]))
                for m in [m for m in page["messages"] if not m["outgoing"]][:left]:
                    show(m)
                    left -= 1
                await api.call("mark_read", conversation=conv)
        # Then what arrives from now on.
        for _ in range(left):
            e = await api.event(
                lambda e: e.get("event") == "message" and not e["message"]["outgoing"]
                and e["message"]["seq"] not in shown,
                a.timeout)
            show(e["message"])
    await api.ws.close()


if __name__ == "__main__":
    asyncio.run(main())
