"""An mpreg worker in Python: serves `add` and `upper` to a daemon.

    python3 -m pip install websockets
    python3 examples/worker.py ws://127.0.0.1:6666

The whole protocol a worker needs is in docs/protocol.md ("Workers").
"""

import asyncio
import json
import sys

import websockets

FUNCTIONS = {
    "add": lambda a, b: a + b,
    "upper": lambda text, suffix="": text.upper() + suffix,
}


async def serve(url: str) -> None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({
            "role": "worker-register",
            "u": "register-1",
            "functions": [
                {"name": name, "version": "1.0.0", "resources": ["python"]}
                for name in FUNCTIONS
            ],
        }))
        async for frame in ws:
            msg = json.loads(frame)
            if msg.get("role") == "internal-rpc":
                try:
                    fun = FUNCTIONS[msg["command"]]
                    reply = {"answer": fun(*msg["args"], **msg["kwargs"])}
                except Exception as e:  # the daemon relays this text to the caller
                    reply = {"error": f"{type(e).__name__}: {e}"}
                await ws.send(json.dumps({"role": "internal-answer", "u": msg["u"], **reply}))
            elif msg.get("u") == "register-1":
                if msg.get("error"):
                    print(f"registration refused: {msg['error']}", file=sys.stderr)
                    sys.exit(1)
                print("registered", flush=True)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:6666"))
