"""Request dependencies every domain shares: the app's settings and its sessionmaker.

``SessionDep`` (one session per request, committed at the edge) lives with the engine in
``core.db``. These read ``app.state``: ``async def`` so FastAPI calls them inline rather than
sending each through its thread pool (this is every authenticated request's hot path).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.settings import Settings


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    return sessionmaker


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# For writes that must commit on their own (throttling, theft detection, API key last use).
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
