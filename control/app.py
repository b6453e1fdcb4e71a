"""What every servicer needs, built once per server: settings, database and token service."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from control.auth.tokens import TokenService
from control.config import ControlSettings


@dataclass
class ControlApp:
    settings: ControlSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tokens: TokenService
