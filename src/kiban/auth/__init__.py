"""Auth: users, access tokens (key ring, kid), rotating refresh tokens, API keys, roles.

What other domains use: who is calling (``Principal`` and the ``CurrentPrincipal``,
``CurrentUser``, ``AdminUser``, ``TokenUser`` dependencies, ``KeyRingDep``), and what the
dashboard's cookie sign-in shares with ``/auth`` (signing in, refreshing, logging out, API keys,
the errors it renders). Everything else is auth's own.
"""

from kiban.auth.api_keys import create_api_key, list_api_keys, revoke_api_key
from kiban.auth.dependencies import (
    AdminUser,
    CurrentPrincipal,
    CurrentUser,
    GatewayKeyPrincipal,
    GatewayPrincipal,
    KeyRingDep,
    Principal,
    TokenUser,
    authenticate_gateway,
    bearer_credentials,
    get_admin_user,
    get_gateway_key_principal,
    get_gateway_principal,
    get_principal,
)
from kiban.auth.exceptions import AuthenticationError, RoleRequired, TokenExpired
from kiban.auth.keys import KeyRing
from kiban.auth.refresh import DEACTIVATED, FamilyRevoked, logout, revoke_user
from kiban.auth.schemas import UserOut
from kiban.auth.service import IssuedTokens, refresh_tokens, sign_in
from kiban.auth.verify import verify_access_token

__all__ = [
    "DEACTIVATED",
    "AdminUser",
    "AuthenticationError",
    "CurrentPrincipal",
    "CurrentUser",
    "FamilyRevoked",
    "GatewayKeyPrincipal",
    "GatewayPrincipal",
    "IssuedTokens",
    "KeyRing",
    "KeyRingDep",
    "Principal",
    "RoleRequired",
    "TokenExpired",
    "TokenUser",
    "UserOut",
    "authenticate_gateway",
    "bearer_credentials",
    "create_api_key",
    "get_admin_user",
    "get_gateway_key_principal",
    "get_gateway_principal",
    "get_principal",
    "list_api_keys",
    "logout",
    "refresh_tokens",
    "revoke_api_key",
    "revoke_user",
    "sign_in",
    "verify_access_token",
]
