"""`python -m bench.http_ceiling --port N`: the HTTP face's ceiling, a FastAPI app that does
no work.

What a typical implementation of the original service is, minus its storage: FastAPI with a
pydantic event model (`datetime` timestamp, `dict` payload), POST /publish taking one event
or an array, answering with the same JSON shape as the aggregator (every event ACCEPTED),
served by uvicorn as `uvicorn app:app` serves it (uvloop and httptools when installed). The
aggregator's HTTP face does the same parsing plus validation, queueing and a commit, so its
single-event rate is compared against this one's in the same run (bench.transports).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Event(BaseModel):
    topic: str
    event_id: str
    timestamp: datetime
    source: str = ""
    payload: dict[str, Any] = {}


app = FastAPI()


@app.post("/publish")
async def publish(body: Event | list[Event]) -> dict[str, Any]:
    events = body if isinstance(body, list) else [body]
    return {
        "received": len(events),
        "accepted": len(events),
        "duplicates": 0,
        "rejected": 0,
        "conflicts": 0,
        "results": [{"status": "ACCEPTED"} for _ in events],
    }


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
