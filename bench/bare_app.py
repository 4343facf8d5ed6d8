"""The framework ceiling: a bare FastAPI app that validates the same exchange body protocoop
takes and answers 201, served by uvicorn with the settings `protocoop serve` uses."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Exchange(BaseModel):
    provider: str
    receiver: str
    amount: int
    description: str


@app.post("/v1/communities/{community_id}/exchanges", status_code=201)
async def post_exchange(community_id: str, exchange: Exchange) -> Exchange:
    return exchange
