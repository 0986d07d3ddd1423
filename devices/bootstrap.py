"""``carecall create-staff``: the first admin (and any staff user) without the API.

The API creates staff only for an authenticated admin, so a fresh installation needs one made
from the command line. Re-running it for an existing username resets that user's password,
role and scope (an operator's way back in), and is audited as the system acting.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

import psycopg

from devices.audit import audit
from devices.auth import ROLES, hash_password
from devices.importer import DEFAULT_DATABASE_URL

_UPSERT = """
INSERT INTO staff_users (username, full_name, role, scope_path, password_hash, on_duty)
VALUES (%(username)s, %(full_name)s, %(role)s, %(scope)s::ltree, %(hash)s, %(on_duty)s)
ON CONFLICT (username) DO UPDATE SET
    full_name = EXCLUDED.full_name, role = EXCLUDED.role, scope_path = EXCLUDED.scope_path,
    password_hash = EXCLUDED.password_hash, on_duty = EXCLUDED.on_duty, retired_at = NULL
RETURNING user_id, (xmax = 0) AS created
"""


async def create_staff(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    *,
    username: str,
    password: str,
    role: str,
    scope_path: str,
    full_name: str | None = None,
    on_duty: bool = False,
) -> tuple[int, bool]:
    """Create or reset a staff user; (user id, created?)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    async with conn.transaction():
        cur = await conn.execute(
            _UPSERT,
            {
                "username": username,
                "full_name": full_name or username,
                "role": role,
                "scope": scope_path,
                "hash": hash_password(password),
                "on_duty": on_duty,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        user_id, created = int(str(row[0])), bool(row[1])
        await audit(
            conn,
            None,
            "create_staff" if created else "reset_staff",
            record_type="staff_user",
            record_id=user_id,
            scope_path=scope_path,
            detail={"username": username, "role": role, "via": "cli"},
        )
    return user_id, created


def create_staff_main(argv: list[str]) -> int:
    import asyncio  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="carecall create-staff", description=__doc__)
    parser.add_argument("--username", required=True)
    parser.add_argument("--role", choices=ROLES, default="admin")
    parser.add_argument("--scope", required=True, help="area path served, e.g. sjz or sjz.changan")
    parser.add_argument("--full-name")
    parser.add_argument("--on-duty", action="store_true")
    parser.add_argument(
        "--password-env",
        default="CARECALL_NEW_STAFF_PASSWORD",
        help="read the password from this environment variable (else prompt)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CARECALL_DATABASE_URL") or DEFAULT_DATABASE_URL,
    )
    args = parser.parse_args(argv)
    password = os.environ.get(args.password_env) or getpass.getpass("password: ")

    async def run() -> tuple[int, bool]:
        async with await psycopg.AsyncConnection.connect(
            args.database_url, autocommit=True
        ) as conn:
            return await create_staff(
                conn,
                username=args.username,
                password=password,
                role=args.role,
                scope_path=args.scope,
                full_name=args.full_name,
                on_duty=args.on_duty,
            )

    try:
        user_id, created = asyncio.run(run())
    except (ValueError, psycopg.Error) as exc:
        print(f"carecall create-staff: {exc}", file=sys.stderr)
        return 1
    print(f"{'created' if created else 'reset'} {args.role} {args.username} (id {user_id})")
    return 0
