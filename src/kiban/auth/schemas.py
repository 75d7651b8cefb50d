"""Request and response bodies of /auth."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, EmailStr, Field

from kiban.auth.passwords import password_problem


def normalize_email(value: Any) -> Any:
    """Emails compare case-insensitively and without surrounding spaces."""
    return value.strip().lower() if isinstance(value, str) else value


def _check_password(value: str) -> str:
    problem = password_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Email = Annotated[EmailStr, BeforeValidator(normalize_email)]
NewPassword = Annotated[str, AfterValidator(_check_password)]


class RegisterRequest(BaseModel):
    email: Email
    password: NewPassword


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: str
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None = None


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105
    expires_in: int = Field(description="Seconds until the access token expires.")


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: NewPassword


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The key's public start, to recognize it (kb_<id>).")
    created_at: datetime
    last_used_at: datetime | None = Field(
        description="Recorded at a one-minute resolution.", default=None
    )


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The API key. Shown once: store it now.")
